#!/usr/bin/env bash
# `make test`: the whole suite (or the folders / files given) in one pytest process.
# The suite used to need one process per file: mosaicml-streaming kept every in-process dataset's shared
# memory (and, for each new dataset, a descriptor per existing one) until exit, past the 20,000 open files
# a CI process may hold. Our readers now release it (pipeline.common.mds_check.released_shared_memory;
# tests/unit/test_reader_shared_memory.py). PER_FILE=1 keeps the old mode (one process per file), e.g.
# to find a test that depends on another's leftovers.
set -uo pipefail
PY=${PY:-.venv/bin/python}
if [[ "${PER_FILE:-0}" != 1 ]]; then
    exec "$PY" -m pytest -q -p no:cacheprovider "${@:-tests}"
fi
failed=()
for file in $(find "${@:-tests}" -name 'test_*.py' | sort); do
    echo "== $file"
    "$PY" -m pytest -q -p no:cacheprovider "$file" || failed+=("$file")
done
if ((${#failed[@]})); then
    echo "FAILED files: ${failed[*]}"
    exit 1
fi
echo "all test files passed"

#!/usr/bin/env bash
# `make test`: every test file in its own pytest process.
# Why: mosaicml-streaming keeps the shared memory of every StreamingDataset a process built (one
# /dev/shm descriptor per shard-state array, ~300 per dataset here) until the process exits; the
# in-process readers of the tests add up to more than the 20,000 open files a CI process may hold when
# the whole suite shares one process. One process per file bounds that (largest file: ~6,600).
set -uo pipefail
PY=${PY:-.venv/bin/python}
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

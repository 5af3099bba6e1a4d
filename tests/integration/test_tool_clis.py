"""Small CLIs run in-process: inspect_kernel on a neighbour artifact, the model's parameter table."""
from __future__ import annotations

import pytest

from pipeline import inspect_kernel
from pipeline.core.model import ModelConfig, parameter_count_formula

from neighbor_tables import random_tables, write_neighbor_artifact

V, K, MASK = 12, 5, 0  # the kernel unit tests' tables (tests/unit/test_kernels.py)


def test_inspect_kernel_cli(tmp_path, capsys):
    write_neighbor_artifact(tmp_path / "nb", random_tables(V, K, MASK), config={"k": K})
    args = ["--neighbors", str(tmp_path / "nb"), "--vocab-size", str(V), "--mask-id", str(MASK), "--t", "0.6"]
    assert inspect_kernel.main(["--kernel", "semdlm_plus", "--token", "3", "--samples", "20000", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("tv=") and float(lines[-1][3:]) < 0.03
    assert len(lines) == 3 + 10 + 1  # header, 10 entries, tv
    with pytest.raises(SystemExit) as exc:  # a bad token is one clear error line and exit status 2
        inspect_kernel.main(["--kernel", "semdlm", "--token", "not-an-id", *args])
    assert exc.value.code == 2 and "integer id" in capsys.readouterr().err


def test_parameter_table_cli(capsys):
    from pipeline.model_size import main
    assert main(["--preset", "small"]) == 0
    out = capsys.readouterr().out
    tied = parameter_count_formula(ModelConfig.preset("small", tie_embeddings=True))["total"]
    assert f"{tied:,}" in out and len(out.strip().splitlines()) == 5

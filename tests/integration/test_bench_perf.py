"""The issue-17 benchmarks run end to end in their quick forms: the trainer-vs-bare reference step (tiny,
a few pairs) and bench/gpu.py --smoke on the CPU (every training variant, the samplers, the likelihood).

Both launch DeepSpeed in a subprocess (one rank, gloo), as the trainer's own integration tests do.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # DeepSpeed in a subprocess

REPO = Path(__file__).resolve().parents[2]


def run_bench(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_reference_step_quick_prints_the_phase_table_and_the_ratio_last(corpora, tmp_path):
    out = tmp_path / "rows.json"
    proc = run_bench(["bench/reference_step.py", "--models", "tiny", "--pairs-tiny", "3", "--warmup", "1",
                      "--work-dir", str(tmp_path / "work"), "--json", str(out)], timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio=\d+\.\d{3}", lines[-1]), lines[-5:]
    ratio = float(lines[-1].split("=")[1])
    (row,) = json.loads(out.read_text())
    assert row["model"] == "tiny" and row["pairs"] == 3 and ratio == pytest.approx(row["ratio"], abs=5e-4)
    assert 0.2 < row["ratio"] < 20 and row["bare_s"] > 0 and row["cpu_ratio"] > 0
    phases = row["trainer_phases_s"]
    assert set(phases) == {"data_wait", "corruption", "forward_backward", "optimizer", "ema", "logging", "other"}
    assert phases["forward_backward"] > 0 and phases["optimizer"] > 0 and phases["ema"] > 0
    table = [line.split()[0] for line in lines if re.match(r"(data_wait|corruption|forward_backward|optimizer|"
                                                            r"ema|logging|other|step) +(-|\d+\.\d) ", line)]
    assert table == ["data_wait", "corruption", "forward_backward", "optimizer", "ema", "logging", "other", "step"]


def test_gpu_bench_smoke_runs_every_path_on_the_cpu_and_writes_json(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run_bench(["-m", "bench.gpu", "--smoke", "--json", str(out)], timeout=600)
    report = json.loads(out.read_text())
    assert report["smoke"] and report["model"] == "tiny" and f"wrote {out}" in proc.stdout
    train = report["train"]
    assert not any(r.get("skipped") for r in train)
    assert {r["zero"] for r in train} == {1, 2, 3}
    assert {r["compile"] for r in train} == {True, False} and {r["checkpointing"] for r in train} == {True, False}
    assert {r["shape"] for r in train} == {"lm1b", "owt"}
    for r in train:
        assert r["tokens_per_s"] > 0 and r["sdpa"] != "unknown" and r["precision"] in ("fp32", "bf16")
        assert r["flops_per_token"] > 0 and r["final_loss"] == r["final_loss"]  # finite-or-not, but a number
        if report["peak_flops"] is None:
            assert r["mfu"] is None
    assert {(r["sampler"], r["steps"]) for r in report["sampler"]} == {(s, n) for s in ("mdlm", "ctmc")
                                                                         for n in (4, 8)}
    assert all(r["tokens_per_s"] > 0 for r in report["sampler"])
    assert {(r["shape"], r["kernel"]) for r in report["likelihood"]} == {(s, k) for s in ("lm1b", "owt")
                                                                         for k in ("mask", "semdlm_plus")}
    assert all(r["tokens_per_s"] > 0 for r in report["likelihood"])

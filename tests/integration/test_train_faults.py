"""Training under faults, end to end (real DeepSpeed, the tiny model): a stop request from SLURM, non-finite
steps, a full disk at a checkpoint. Helpers: test_train.py; the shared data: conftest.py.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from test_train import PYTHON, REPO, TINY, _check, env, run_train, train_command

from cli_utils import step_losses

pytestmark = pytest.mark.slow  # every test here launches DeepSpeed


@pytest.mark.parametrize("how", ["signal", "stop_file"])
def test_stop_request_checkpoints_and_exits_for_requeue(how, preprocessed, tmp_path):
    run_dir = tmp_path / "run"
    cmd = train_command(run_dir, preprocessed, [*TINY, "max_steps=200", "ckpt_every=100"])
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run_dir / "metrics.jsonl").exists() and 2 in step_losses(run_dir)):
        time.sleep(0.2)
    if how == "signal":
        proc.send_signal(signal.SIGUSR1)  # what SLURM sends to the tasks ahead of the time limit
    else:
        (run_dir / "STOP").touch()  # what slurm/train.sh does when its batch shell gets the signal
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    stopped = max(step_losses(run_dir))
    assert 2 <= stopped < 200 and f"checkpointed at step {stopped}" in out
    assert (run_dir / "checkpoints" / f"global_step{stopped}" / "semdlm_checkpoint.json").is_file()
    assert not (run_dir / "finished.json").exists()


def test_nonfinite_steps_are_skipped_then_abort_with_checkpoint(preprocessed, tmp_path):
    run_dir = tmp_path / "run"
    # An absurd learning rate blows the weights up after the first update: every later loss is NaN/Inf.
    proc = run_train(train_command(run_dir, preprocessed, ["lr=1e30", "warmup_steps=0", "val_every=0",
                                                           "log_every=1", "max_steps=20", "max_bad_steps=3"]))
    assert proc.returncode != 0
    assert "3 consecutive non-finite steps" in proc.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    bad = [r for r in records if r.get("train/bad_steps_total", 0) > 0]
    assert bad and bad[-1]["train/bad_steps_total"] == 3
    step = records[-1]["step"]
    assert (run_dir / "checkpoints" / f"global_step{step}" / "semdlm_checkpoint.json").is_file()


ENOSPC_AT_STEP4 = """
import errno, os, runpy, sys
import torch
real_save = torch.save
def full_disk(obj, f, *args, **kwargs):  # DeepSpeed's and our checkpoint files both go through torch.save
    if "global_step4" in str(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
    return real_save(obj, f, *args, **kwargs)
torch.save = full_disk
sys.argv = ["pipeline/train.py", *sys.argv[1:]]
runpy.run_path("pipeline/train.py", run_name="__main__")
"""


def test_full_disk_at_a_checkpoint_keeps_the_previous_one_loadable(preprocessed, tmp_path):
    """1 rank (a 2-rank job fails the same way on the rank that cannot write, and the launcher stops the rest)."""
    from pipeline.training.checkpoint import complete_tags, read_checkpoint_for_export

    run_dir = tmp_path / "run"
    cmd = train_command(run_dir, preprocessed, [*TINY, "max_steps=6", "ckpt_every=2"])
    proc = run_train([PYTHON, "-c", ENOSPC_AT_STEP4, *cmd[2:]])
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pipeline/train.py: error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "could not write checkpoint global_step4" in lines[0] and "No space left on device" in lines[0]
    assert "the newest complete checkpoint global_step2 is intact" in lines[0]
    assert complete_tags(run_dir) == ["global_step2"]
    assert not (run_dir / "checkpoints" / "global_step4").exists() and not (run_dir / ".lock").exists()
    assert read_checkpoint_for_export(run_dir).training["step"] == 2
    before = step_losses(run_dir)

    proc = run_train(train_command(run_dir, preprocessed, [*TINY, "max_steps=4", "ckpt_every=2"]))
    _check(proc)
    assert "resumed from global_step2" in proc.stdout
    after = step_losses(run_dir)
    assert [after[s] for s in (3, 4)] == [before[s] for s in (3, 4)]  # the same steps again, bit for bit
    assert complete_tags(run_dir) == ["global_step2", "global_step4"]

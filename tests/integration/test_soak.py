"""The 3-kill version of ``bench/soak.py`` (issue 16): real deepspeed launcher, 2 CPU ranks, ZeRO-2,
real SIGKILLs at fixed moments, each followed by a plain restart; at the end the run must equal an
uninterrupted one step for step (losses, validation, sample ids, final weights and EMA) and have seen
every sample of the epoch exactly once. The 10-kill soak at random moments: ``python -m bench.soak``.
"""
from __future__ import annotations

import pytest

from bench.soak import SoakConfig, soak
from pipeline.common.faults import Fault
from pipeline.training.checkpoint import checkpoint_dir, complete_tags

pytestmark = pytest.mark.slow

# ckpt every 3 steps, keep 2: each kill lands where the newest complete checkpoint is the one named
PLAN = [
    Fault("save.torn_file", step=3, rank=1, scope="rank"),       # rank 1's optimizer file torn: no checkpoint yet
    Fault("step.backward", step=5, rank=0, scope="job"),         # mid step: resumes from step 3
    Fault("save.prune", step=9, rank=0, scope="job"),            # step 9 complete, step 3 half pruned
]


def test_three_kills_then_identical_to_an_uninterrupted_run(tmp_path, corpora):
    report = soak(tmp_path, SoakConfig(kills=3, lines=360, plan=PLAN), progress=lambda _: None)
    assert report.ok, report.problems
    assert [k["resumed_from"] for k in report.kills] == [0, 0, 3]
    assert [k["complete_after"] for k in report.kills] == [0, 3, 9]
    assert all(k["fired"] and k["exit"] != 0 for k in report.kills)
    assert report.steps_compared * 16 == report.samples_checked == report.epoch_samples > 0
    assert report.steps_redone > 0  # the kills cost work that was redone, and it came out the same
    soaked = tmp_path / "soaked"
    # the half-pruned tag was cleaned up by a later save; only complete tags are left
    assert [p.name for p in sorted(checkpoint_dir(soaked).glob("global_step*"))] == complete_tags(soaked)

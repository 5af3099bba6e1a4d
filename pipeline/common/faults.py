"""Fault injection for the reliability tests and ``bench/soak.py`` (issue 16): SIGKILL at a named point.

Inert unless the environment variable ``SEMDLM_FAULT`` is set, e.g.::

    SEMDLM_FAULT="point=save.torn_file,step=6,rank=1,scope=job,nth=1"

* ``point``: where the process dies (:data:`POINTS`);
* ``step``: the optimizer step the point belongs to (the step being computed, validated or saved,
  counted from 1 as in metrics.jsonl);
* ``rank``: which global rank dies;
* ``scope``: ``rank`` kills that process only (a crashed rank: the deepspeed launcher then stops the
  others), ``job`` kills its whole process group (launcher and every rank at once: ``scancel -s KILL``,
  a lost node);
* ``nth``: for ``save.torn_file``, which file of DeepSpeed's save is torn (1 = the first this rank writes).

Before dying it appends one JSON line to ``SEMDLM_FAULT_LOG`` (when set), so a driver can tell a kill
that fired from a run that failed for another reason. Real kills, not exceptions: nothing in the
process gets to clean up, exactly as with the OOM killer or a preempted node.
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "SEMDLM_FAULT"
LOG_ENV = "SEMDLM_FAULT_LOG"

# point -> what has happened when the process dies there
POINTS = {
    "step.begin": "between steps: the previous step is logged, the next has not read its data",
    "step.forward": "mid step: after the forward of the first micro-batch, before its backward",
    "step.backward": "mid step: after the backward, before the optimizer step",
    "val.batch": "mid validation: after the first validation batch",
    "save.begin": "mid save: before DeepSpeed writes anything of this tag",
    "save.torn_file": "mid save: a file of DeepSpeed's save half written (torn), the rest of the save not done",
    "save.rank_state": "mid save: this rank's DeepSpeed files and RNG/EMA state written, before the barrier",
    "save.before_marker": "mid save: every rank's files written, before rank 0 marks the tag complete",
    "save.after_marker": "mid save: the tag marked complete, older tags not yet pruned",
    "save.prune": "mid save: an older tag un-marked for pruning, its files not yet removed",
}
SCOPES = ("rank", "job")


@dataclass(frozen=True)
class Fault:
    point: str
    step: int
    rank: int
    scope: str = "job"
    nth: int = 1

    def to_env(self) -> str:
        return f"point={self.point},step={self.step},rank={self.rank},scope={self.scope},nth={self.nth}"


def parse(spec: str) -> Fault:
    fields = dict(part.split("=", 1) for part in spec.split(",") if part)
    fault = Fault(point=fields["point"], step=int(fields["step"]), rank=int(fields["rank"]),
                  scope=fields.get("scope", "job"), nth=int(fields.get("nth", 1)))
    if fault.point not in POINTS or fault.scope not in SCOPES:
        raise ValueError(f"{ENV}={spec!r}: point must be one of {sorted(POINTS)}, scope one of {SCOPES}")
    return fault


_FAULT: Fault | None = parse(os.environ[ENV]) if os.environ.get(ENV) else None


def armed(point: str, step: int, rank: int) -> bool:
    f = _FAULT
    return f is not None and f.point == point and f.step == step and f.rank == rank


def point(name: str, step: int, rank: int) -> None:
    """Die here if ``SEMDLM_FAULT`` names this point, step and rank; otherwise a no-op."""
    if armed(name, step, rank):
        kill(name, step, rank)


def kill(name: str, step: int, rank: int) -> None:
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps({"point": name, "step": step, "rank": rank, "scope": _FAULT.scope,
                                 "time": time.time()}) + "\n")
    if _FAULT.scope == "job":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def tear_nth_save(engine, step: int, rank: int) -> None:
    """Arm ``save.torn_file``: the nth file this rank's DeepSpeed save writes is cut to half its bytes,
    then the process dies (what a kill in the middle of a large write leaves on disk)."""
    if not armed("save.torn_file", step, rank):
        return
    checkpoint_engine = engine.checkpoint_engine
    original, count = checkpoint_engine.save, [0]

    def save(state_dict, path, *args, **kwargs):
        out = original(state_dict, path, *args, **kwargs)
        count[0] += 1
        if count[0] == _FAULT.nth:
            size = Path(path).stat().st_size
            os.truncate(path, size // 2)
            kill("save.torn_file", step, rank)
        return out

    checkpoint_engine.save = save

"""Soak: a 2-rank ZeRO-2 tiny run SIGKILLed at random moments and restarted each time (issue 16).

    .venv/bin/python -m bench.soak                      # 10 kills, one epoch of a 720-sentence corpus
    .venv/bin/python -m bench.soak --kills 3 --seed 1   # what tests/integration/test_soak.py runs

One run, all real: the preprocess CLI builds a small artifact (one epoch = a few dozen steps), the
deepspeed launcher runs ``pipeline/train.py`` on 2 CPU ranks. First an uninterrupted reference
run; then the same run killed ``--kills`` times, each kill at a moment drawn from four kinds:

* between steps (``step.begin``), mid step (``step.forward`` / ``step.backward``),
* mid validation (``val.batch``),
* mid checkpoint save (``save.*``: before anything is written, a torn DeepSpeed file, after this rank's
  files, before / after rank 0's completion marker, mid prune),

on a random rank, killing that rank alone (the launcher stops the other) or the whole job
(:mod:`pipeline.common.faults`). After each kill the run is simply started again with the same
command; it resumes from the newest complete checkpoint. At the end:

* every step's loss equals the reference's, bit for bit (fp32 on CPU), and so do the validation
  NELBOs and the final checkpoint's weights, EMA and optimizer step count;
* the per-step sample ids equal the reference's and every sample of the epoch was seen exactly once.

The last line is ``kills=<survived> steps=<compared> samples=<checked> ok=<yes|no>``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.common.faults import ENV as FAULT_ENV
from pipeline.common.faults import LOG_ENV, Fault
from pipeline.training.checkpoint import checkpoint_dir, complete_tags

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpora" / "lm1b_sample" / "train.txt"
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
KINDS = ("between", "step", "val", "save")
SAVE_POINTS = ("save.begin", "save.torn_file", "save.rank_state", "save.before_marker", "save.after_marker",
               "save.prune")


@dataclass
class SoakConfig:
    kills: int = 10
    seed: int = 0
    lines: int = 720              # corpus sentences; 10 % go to validation
    ckpt_every: int = 3
    val_every: int = 5
    keep_last: int = 2
    timeout: int = 600            # seconds per launch
    plan: list[Fault] | None = None  # explicit kills instead of drawn ones


@dataclass
class SoakReport:
    kills: list[dict] = field(default_factory=list)
    steps_compared: int = 0
    steps_redone: int = 0
    samples_checked: int = 0
    epoch_samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def build_data(out: Path, lines: int) -> Path:
    corpus = out.parent / "corpus.txt"
    with open(CORPUS) as fh:
        corpus.write_text("".join(line for _, line in zip(range(lines), fh)))
    subprocess.run([sys.executable, "-m", "preprocess", "--input", str(corpus), "--valid-fraction", "0.1",
                    "--out", str(out), "--mode", "lm1b", "--seq-len", "32", "--no-progress"],
                   cwd=REPO, check=True, capture_output=True)
    return out


def train_samples(preprocessed: Path) -> int:
    index = json.loads((preprocessed / "train" / "index.json").read_text())
    return sum(shard["samples"] for shard in index["shards"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(run_dir: Path, preprocessed: Path, max_steps: int, cfg: SoakConfig) -> list[str]:
    return [DEEPSPEED, "--num_gpus", "2", "--master_port", str(_free_port()), "pipeline/train.py",
            "--ds_config", "ds_configs/zero2.json", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir),
            "--preprocessed", str(preprocessed), "lr=3e-3", "warmup_steps=2", "log_every=1", "ema_decay=0.9",
            f"max_steps={max_steps}", f"ckpt_every={cfg.ckpt_every}", f"val_every={cfg.val_every}",
            f"keep_last={cfg.keep_last}", "log_sample_ids=true"]


def launch(cmd: list[str], fault: Fault | None, fault_log: Path, timeout: int) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", FAULT_ENV):
        env.pop(var, None)
    if fault is not None:
        env[FAULT_ENV], env[LOG_ENV] = fault.to_env(), str(fault_log)
    log = open(fault_log.with_suffix(".out"), "a")
    # its own session: a "job" kill takes the launcher and both ranks, never this driver
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError(f"a launch ran past {timeout} s (hung after a kill?); see {log.name}") from None
    finally:
        log.close()


def resumable_step(run_dir: Path) -> int:
    tags = complete_tags(run_dir)
    return int(tags[-1].removeprefix("global_step")) if tags else 0


def draw_fault(rng: random.Random, kind: str, resume: int, max_steps: int, cfg: SoakConfig) -> Fault:
    """A kill of ``kind`` after the newest complete checkpoint (step ``resume``), within two checkpoints."""
    def upcoming(every: int) -> list[int]:
        steps = [s for s in range(resume + 1, max_steps + 1) if s % every == 0 or s == max_steps]
        return steps[:2]

    rank, scope = rng.randrange(2), rng.choice(("rank", "job"))
    if kind == "save":
        point = rng.choice(SAVE_POINTS)
        if point == "save.prune":  # rank 0 prunes, once keep_last older tags exist
            rank = 0
            steps = [s for s in upcoming(cfg.ckpt_every) if s // cfg.ckpt_every > cfg.keep_last]
            if not steps:
                point, steps = "save.after_marker", upcoming(cfg.ckpt_every)
        else:
            steps = upcoming(cfg.ckpt_every)
        nth = rng.choice((1, 2)) if point == "save.torn_file" and rank == 0 else 1  # rank 0 writes 2 files
        return Fault(point, rng.choice(steps), rank, scope, nth)
    if kind == "val":
        return Fault("val.batch", rng.choice(upcoming(cfg.val_every)), rank, scope)
    step = rng.randint(resume + 1, min(max_steps, resume + 2 * cfg.ckpt_every))
    point = "step.begin" if kind == "between" else rng.choice(("step.forward", "step.backward"))
    return Fault(point, step, rank, scope)


def _records(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl per step, the last record of a step that was redone; and how many were redone."""
    out, seen = {}, 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["step"] in out:
            seen += 1
        out.setdefault(rec["step"], {}).update(rec)
    return out, seen


def _sample_ids(run_dir: Path, rank: int) -> dict[int, list[int]]:
    lines = (run_dir / f"sample_ids_rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r["ids"] for r in map(json.loads, lines)}


def _final_states(run_dir: Path) -> dict:
    tag = complete_tags(run_dir)[-1]
    return torch.load(checkpoint_dir(run_dir) / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                      weights_only=False)  # our own files, written by this run (DeepSpeed pickles its config)


def compare(reference: Path, soaked: Path, max_steps: int, epoch_samples: int, report: SoakReport) -> None:
    ref, redone = _records(reference)[0], _records(soaked)
    got, report.steps_redone = redone
    for step in range(1, max_steps + 1):
        for key in ("train/loss", "val/nelbo"):
            if ref.get(step, {}).get(key) != got.get(step, {}).get(key):
                report.problems.append(f"step {step} {key}: {got.get(step, {}).get(key)!r} != "
                                       f"{ref.get(step, {}).get(key)!r} (reference)")
    report.steps_compared = sum(1 for s in range(1, max_steps + 1) if "train/loss" in got.get(s, {}))
    seen = []
    for rank in (0, 1):
        ids = _sample_ids(soaked, rank)
        if ids != _sample_ids(reference, rank):
            report.problems.append(f"rank {rank}: per-step sample ids differ from the reference")
        seen += [i for step in sorted(ids) for i in ids[step]]
    report.samples_checked = len(seen)
    if len(set(seen)) != len(seen):
        report.problems.append(f"{len(seen) - len(set(seen))} samples seen twice within the epoch")
    if len(seen) != epoch_samples:
        report.problems.append(f"{len(seen)} samples seen, the epoch holds {epoch_samples}")
    a, b = _final_states(reference), _final_states(soaked)
    for name in a["module"]:
        if not torch.equal(a["module"][name], b["module"][name]):
            report.problems.append(f"final weights differ: {name}")
            break
    ema_a, ema_b = a["ema"]["weights"], b["ema"]["weights"]
    if set(ema_a) != set(ema_b) or not all(torch.equal(ema_a[n], ema_b[n]) for n in ema_a):
        report.problems.append("final EMA weights differ")


def soak(workdir: Path, cfg: SoakConfig, progress=print) -> SoakReport:
    workdir = Path(workdir)
    preprocessed = build_data(workdir / "data", cfg.lines)
    samples = train_samples(preprocessed)
    max_steps = samples // 16  # one epoch at the tiny preset's global batch (the last partial batch dropped)
    report = SoakReport(epoch_samples=max_steps * 16)
    fault_log = workdir / "faults.jsonl"
    progress(f"{samples} training samples: {max_steps} steps of 16, ckpt every {cfg.ckpt_every}, "
             f"validation every {cfg.val_every}")

    reference, soaked = workdir / "reference", workdir / "soaked"
    t0 = time.perf_counter()
    if launch(command(reference, preprocessed, max_steps, cfg), None, workdir / "reference_log", cfg.timeout):
        raise RuntimeError(f"the reference run failed; see {workdir / 'reference_log.out'}")
    progress(f"reference run: {time.perf_counter() - t0:.0f} s")

    rng = random.Random(cfg.seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(cfg.kills)]
    rng.shuffle(kinds)
    for i in range(cfg.kills):
        resume = resumable_step(soaked)
        fault = cfg.plan[i] if cfg.plan else draw_fault(rng, kinds[i], resume, max_steps, cfg)
        fired_before = len(fault_log.read_text().splitlines()) if fault_log.exists() else 0
        t0 = time.perf_counter()
        code = launch(command(soaked, preprocessed, max_steps, cfg), fault, fault_log, cfg.timeout)
        fired = (fault_log.read_text().splitlines() if fault_log.exists() else [])[fired_before:]
        entry = {"fault": fault.to_env(), "resumed_from": resume, "exit": code, "fired": bool(fired),
                 "seconds": round(time.perf_counter() - t0, 1), "complete_after": resumable_step(soaked)}
        report.kills.append(entry)
        progress(f"kill {i + 1}/{cfg.kills}: {fault.point} at step {fault.step} on rank {fault.rank} "
                 f"({fault.scope}); exit {code}; resumed from step {resume}, newest complete checkpoint now "
                 f"step {entry['complete_after']}")
        if not fired or code == 0:
            report.problems.append(f"kill {i + 1} ({fault.to_env()}) did not happen (exit {code})")
    if launch(command(soaked, preprocessed, max_steps, cfg), None, workdir / "final_log", cfg.timeout):
        report.problems.append(f"the final restart failed; see {workdir / 'final_log.out'}")
        return report
    compare(reference, soaked, max_steps, report.epoch_samples, report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lines", type=int, default=720, help="corpus sentences (one epoch is the run)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory)")
    args = p.parse_args(argv)
    cfg = SoakConfig(kills=args.kills, seed=args.seed, lines=args.lines)
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        report = soak(workdir, cfg)
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
        survived = sum(1 for k in report.kills if k["fired"] and k["exit"] != 0)
        print(f"{survived} kills survived, {report.steps_compared} steps compared ({report.steps_redone} redone "
              f"after kills), {report.samples_checked} samples checked of an epoch of {report.epoch_samples}; "
              f"{time.perf_counter() - t0:.0f} s")
        print(f"kills={survived} steps={report.steps_compared} samples={report.samples_checked} "
              f"ok={'yes' if report.ok else 'no'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

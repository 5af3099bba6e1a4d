"""Benchmark: our full trainer step against a bare PyTorch loop on the same model, data and batch (issue 17).

Target: trainer step / bare step <= 1.10 on CPU for ``tiny`` and ``small``. Both run in this one process,
alternating (bare, trainer, bare, trainer, ...), so load from other jobs on the machine hits both
alike. The ratio is the median over pairs of (trainer wall / bare wall), the pairs after ``--warmup``;
also printed: the ratio of the two wall medians and the median ratio of process CPU time (all threads),
which does not see the time a busy machine keeps the process waiting for a core.

* **trainer**: the production object. ``pipeline.training.launch.build_trainer`` builds it exactly as
  ``pipeline/train.py`` does (single-process gloo group, DeepSpeed ZeRO-2 from ``ds_configs/zero2.json``
  through our ds_config builder, torch AdamW, the kernel and Eq 120 objective, EMA, the
  StreamingDataset loader over a preprocess artifact of the LM1B sample, MetricsLogger with
  TensorBoard), and ``Trainer.run`` drives it: one timed iteration is everything ``run`` does per step
  (``train_step``: data, corruption, forward + backward, DeepSpeed step, EMA; then logging and the
  bookkeeping). Phases come from the trainer's own StepTimer (recorded per step here) plus a timer
  around ``MetricsLogger.log``; "other" is the iteration minus its timed phases.
* **bare**: the same ModelConfig and initial weights (same seed), ``torch.optim.AdamW`` (foreach on
  CPU, or torch's fused kernel with ``--bare-optimizer fused``; fused on GPU) with the same
  hyper-parameters, gradient clipping to the same norm (``clip_grad_norm_``, foreach), one fixed
  in-memory micro-batch of the same token data (the first rows of the train split) noised once up
  front with the mask kernel, and the loss
  ``F.cross_entropy(logits, labels)`` with labels -100 at unmasked positions. No DeepSpeed, EMA,
  corruption, loader or logging. Same precision as the trainer (fp32 on CPU, bf16 autocast on GPU).

Building the trainer also applies its CPU process setting (freed memory stays in glibc's heap,
``pipeline/common/cpu_host.py``), which the bare loop then shares: the two differ only in their steps.
``SEMDLM_MALLOC=system`` measures both with glibc's defaults.

Shapes: ``tiny`` at B = 16, L = 32 (the trainer tests' shape), ``small`` at B = 8, L = 128 (one
micro-batch per step, no accumulation), the bert vocabulary (V = 30,522), mask kernel.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/reference_step.py                # tiny and small
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/reference_step.py --models tiny  # about a minute

The last line printed is ``ratio=<trainer step / bare step, tiny>`` (the first model measured when
tiny is not).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.train_step import build_data  # noqa: E402

TARGET = 1.10
SHAPES = {"tiny": (16, 32), "small": (8, 128)}  # model -> (micro batch = global batch, seq_len)
TRAINER_PHASES = ("data_wait", "corruption", "forward_backward", "optimizer", "ema", "logging", "other")
BARE_PHASES = ("data_wait", "forward_backward", "optimizer")


def _now(device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


class PhaseLog:
    """Per-step phase times of one side: ``begin`` opens a step, ``add`` charges (wall, CPU) seconds to it."""

    def __init__(self):
        self.steps: list[dict[str, list[float]]] = []

    def begin(self) -> None:
        self.steps.append(defaultdict(lambda: [0.0, 0.0]))

    def add(self, name: str, start: tuple[float, float], end: tuple[float, float]) -> None:
        if self.steps:
            entry = self.steps[-1][name]
            entry[0] += end[0] - start[0]
            entry[1] += end[1] - start[1]


class RecordingTimer:
    """The trainer's StepTimer, also charging every phase to the current step of a PhaseLog."""

    def __init__(self, timer, log: PhaseLog, device: torch.device):
        self.timer, self.log, self.device = timer, log, device

    @contextmanager
    def phase(self, name: str):
        start = _now(self.device)
        with self.timer.phase(name):
            yield
        self.log.add(name, start, _now(self.device))

    def pop(self) -> dict[str, float]:
        return self.timer.pop()


class BareStep:
    """The reference: a plain PyTorch training step on a fixed, pre-noised micro-batch."""

    def __init__(self, model_cfg, cfg, x0: torch.Tensor, kernel, pad_id: int | None, device: torch.device,
                 optimizer: str = "foreach"):
        from pipeline.core.model import build_model

        torch.manual_seed(cfg.seed)  # the trainer's initial weights (pipeline.training.launch.build_engine)
        self.model = build_model(model_cfg).to(device).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        cuda = device.type == "cuda"
        fused = cuda or optimizer == "fused"
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps,
                                     weight_decay=cfg.weight_decay, foreach=not fused, fused=fused)
        self.clip, self.device = cfg.grad_clip, device
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
        gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        x0 = x0.to(device)
        self.t = torch.rand(x0.shape[0], generator=gen, device=device).clamp_min(cfg.t_min)
        self.xt, changed = kernel.sample_xt(x0, self.t, generator=gen)
        real = torch.ones_like(changed) if pad_id is None else x0 != pad_id
        self.labels = torch.where(changed & real, x0, -100)
        self.vocab = model_cfg.vocab_size

    def step(self, log: PhaseLog) -> tuple[float, float]:
        """One step; returns its (wall, CPU) seconds, phases charged to ``log``."""
        start = _now(self.device)
        xt, t, labels = self.xt.to(self.device), self.t.to(self.device), self.labels.to(self.device)
        mark = _now(self.device)
        log.add("data_wait", start, mark)
        with self.autocast:
            logits = self.model(xt, t)
        loss = F.cross_entropy(logits.view(-1, self.vocab), labels.view(-1))
        loss.backward()
        now = _now(self.device)
        log.add("forward_backward", mark, now)
        torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        end = _now(self.device)
        log.add("optimizer", now, end)
        return end[0] - start[0], end[1] - start[1]


def build(model: str, batch: int, seq_len: int, work: Path, kernel: str, neighbors: str | None,
          ds_config: str, bare_optimizer: str = "foreach"):
    """(the trainer as pipeline/train.py builds it, a BareStep on the same model and data)."""
    from pipeline.training.config import load_config
    from pipeline.training.data import _tokens_dataset_class
    from pipeline.training.launch import build_trainer

    data = build_data(work / f"data{seq_len}", seq_len)
    run_dir = work / f"run_{model}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"model={model}", f"global_batch={batch}", f"micro_batch={batch}", "val_every=0", "ckpt_every=0",
                 "seq_len=null", "warmup_steps=1", "max_steps=1000000"]
    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides, run_dir=str(run_dir), preprocessed=str(data),
                      kernel=kernel, neighbors=neighbors)
    trainer = build_trainer(cfg, str(REPO / ds_config))
    split = _tokens_dataset_class()(local=str(data / "train"), shuffle=False, batch_size=batch, predownload=None)
    x0 = torch.stack([torch.from_numpy(split[i]["tokens"]) for i in range(batch)])  # the first rows of the same split
    bare = BareStep(trainer.engine.module.cfg, cfg, x0, trainer.objective.kernel, trainer.pad_id, trainer.env.device,
                    bare_optimizer)
    return trainer, bare


def measure(trainer, bare: BareStep, pairs: int, warmup: int) -> dict:
    """Run ``warmup + pairs`` alternating (bare, trainer) steps through ``Trainer.run``; per-step phases."""
    device = trainer.env.device
    logs = {"bare": PhaseLog(), "trainer": PhaseLog()}
    totals: dict[str, list[tuple[float, float]]] = {"bare": [], "trainer": []}  # (wall, cpu) per step
    trainer.timer = RecordingTimer(trainer.timer, logs["trainer"], device)
    real_log, real_step = trainer.logger.log, trainer.train_step
    state = {"trainer_start": None}

    def timed_log(*a, **kw):
        start = _now(device)
        real_log(*a, **kw)
        logs["trainer"].add("logging", start, _now(device))

    def interleaved_step():
        now = _now(device)
        if state["trainer_start"] is not None:  # the previous run() iteration ends here
            totals["trainer"].append((now[0] - state["trainer_start"][0], now[1] - state["trainer_start"][1]))
        logs["bare"].begin()
        totals["bare"].append(bare.step(logs["bare"]))
        logs["trainer"].begin()
        state["trainer_start"] = _now(device)
        return real_step()

    trainer.logger.log, trainer.train_step = timed_log, interleaved_step
    trainer.cfg.max_steps = warmup + pairs + 1  # the last iteration has no next step to close it: dropped
    trainer.run()
    n = warmup + pairs
    out = {}
    for side in ("bare", "trainer"):
        steps, kept = logs[side].steps[warmup:n], totals[side][warmup:n]
        for step, total in zip(steps, kept):
            for k in (0, 1):  # what no phase timer covers: bookkeeping in run(), hooks, the lr lookup
                step["other"][k] = max(0.0, total[k] - sum(v[k] for name, v in step.items() if name != "other"))
        out[side] = {"wall": [t[0] for t in kept], "cpu": [t[1] for t in kept], "phases": steps}
    return out


def summarise(name: str, batch: int, seq_len: int, n_params: int, result: dict) -> dict:
    med = statistics.median
    bare, trainer = result["bare"], result["trainer"]
    row = {"model": name, "batch": batch, "seq_len": seq_len, "params": n_params, "pairs": len(bare["wall"]),
           "bare_s": med(bare["wall"]), "trainer_s": med(trainer["wall"]),
           "bare_cpu_s": med(bare["cpu"]), "trainer_cpu_s": med(trainer["cpu"]),
           # the headline: adjacent steps share the machine's load, so their ratio cancels most of it
           "ratio": med(t / b for t, b in zip(trainer["wall"], bare["wall"])),
           "cpu_ratio": med(t / b for t, b in zip(trainer["cpu"], bare["cpu"]))}
    row["ratio_of_medians"] = row["trainer_s"] / row["bare_s"]
    for side, phases in (("bare", BARE_PHASES + ("other",)), ("trainer", TRAINER_PHASES)):
        for k, kind in ((0, "s"), (1, "cpu_s")):
            row[f"{side}_phases_{kind}"] = {p: med(s[p][k] if p in s else 0.0 for s in result[side]["phases"])
                                            for p in phases}
    return row


def print_table(row: dict) -> None:
    print(f"\n{row['model']}: B={row['batch']} L={row['seq_len']}, {row['params']:,} parameters, "
          f"{row['pairs']} pairs; medians in ms of wall and of process CPU time (phase medians need not add "
          "up to the step's)")
    print(f"{'phase':<18}{'bare':>9}{'trainer':>9}{'diff':>9}{'bare cpu':>11}{'trainer cpu':>13}{'diff cpu':>10}")
    bare_phases = BARE_PHASES + ("other",)
    for p in TRAINER_PHASES:
        cells = []
        for kind in ("s", "cpu_s"):
            b = row[f"bare_phases_{kind}"].get(p) if p in bare_phases else None
            t = row[f"trainer_phases_{kind}"][p]
            cells.append(("-" if b is None else f"{1e3 * b:.1f}", f"{1e3 * t:.1f}", f"{1e3 * (t - (b or 0.0)):+.1f}"))
        (bw, tw, dw), (bc, tc, dc) = cells
        print(f"{p:<18}{bw:>9}{tw:>9}{dw:>9}{bc:>11}{tc:>13}{dc:>10}")
    print(f"{'step':<18}{1e3 * row['bare_s']:>9.1f}{1e3 * row['trainer_s']:>9.1f}"
          f"{1e3 * (row['trainer_s'] - row['bare_s']):>+9.1f}{1e3 * row['bare_cpu_s']:>11.1f}"
          f"{1e3 * row['trainer_cpu_s']:>13.1f}{1e3 * (row['trainer_cpu_s'] - row['bare_cpu_s']):>+10.1f}")
    verdict = "PASS" if row["ratio"] <= TARGET else "FAIL"
    print(f"{row['model']}: trainer / bare = {row['ratio']:.3f} (median of per-pair wall ratios; ratio of the "
          f"medians {row['ratio_of_medians']:.3f}, process CPU time {row['cpu_ratio']:.3f}); target <= "
          f"{TARGET:.2f}: {verdict}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "small"], choices=tuple(SHAPES))
    p.add_argument("--pairs-tiny", type=int, default=30, help="timed (bare, trainer) pairs for tiny")
    p.add_argument("--pairs-small", type=int, default=8, help="timed (bare, trainer) pairs for small")
    p.add_argument("--warmup", type=int, default=2, help="untimed pairs first")
    p.add_argument("--kernel", default="mask")
    p.add_argument("--neighbors", default=None, help="neighbor_index artifact (semantic kernels)")
    p.add_argument("--ds-config", default="ds_configs/zero2.json")
    p.add_argument("--bare-optimizer", choices=("foreach", "fused"), default="foreach",
                   help="AdamW implementation of the bare loop on CPU (GPU: always fused)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--work-dir", default=None, help="keep data and runs here (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_reference_"))
    rows = []
    for model in args.models:
        batch, seq_len = SHAPES[model]
        trainer, bare = build(model, batch, seq_len, work, args.kernel, args.neighbors, args.ds_config,
                              args.bare_optimizer)
        pairs = args.pairs_tiny if model == "tiny" else args.pairs_small
        result = measure(trainer, bare, pairs, args.warmup)
        n_params = sum(p.numel() for p in bare.params)
        rows.append(summarise(model, batch, seq_len, n_params, result))
        print_table(rows[-1])
        del trainer, bare
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    head = next((r for r in rows if r["model"] == "tiny"), rows[0])
    print(f"ratio={head['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

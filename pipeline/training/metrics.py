"""Rank-0 logging (TensorBoard, W&B + console + metrics.jsonl), step timing, MFU, gradient-variance probe."""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

STEP_PHASES = ("data_wait", "corruption", "forward_backward", "optimizer", "ema")


def model_flops_utilization(tokens_per_second: float, flops_per_token: float, peak_flops: float,
                            num_devices: int) -> float:
    """MFU = achieved model FLOP/s / (peak FLOP/s per device * devices) (PaLM, Chowdhery et al. 2022).

    ``flops_per_token`` is pipeline.core.model.flops_per_token: 6N + 12 n_layer d L (attention included, the
    per-sequence conditioning path counted once per sequence).
    """
    return tokens_per_second * flops_per_token / (peak_flops * num_devices)


class StepTimer:
    """Wall time per phase of a step; ``synchronize`` makes GPU phases honest (CUDA is async)."""

    def __init__(self, synchronize: bool):
        self.synchronize = synchronize
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str):
        if self.synchronize:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.synchronize:
                torch.cuda.synchronize()
            self.totals[name] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out = dict(self.totals)
        self.totals.clear()
        return out


class MetricsLogger:
    """Writes on rank 0 only; other ranks get a logger whose calls do nothing."""

    def __init__(self, run_dir: Path, rank: int, enabled_tensorboard: bool = True, wandb: dict | None = None):
        """``wandb``: project, mode, config of a W&B run beside TensorBoard (pipeline/training/wandb_logger.py)."""
        self.active = rank == 0
        self.writer = None
        self.jsonl = None
        self.wandb = None
        if not self.active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if wandb is not None:
            from pipeline.training.wandb_logger import WandbSink

            self.wandb = WandbSink(run_dir, **wandb)
        if enabled_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is an install requirement, but do not die for a logger
                print("warning: tensorboard is not installed; logging to metrics.jsonl only")

    def log(self, step: int, values: dict[str, float], console: bool = True) -> None:
        if not self.active:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None}
        if self.writer is not None:
            for key, value in clean.items():
                if math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        if self.wandb is not None:
            self.wandb.log(step, clean)
        if console:
            shown = " ".join(f"{k.split('/')[-1]}={_fmt(v)}" for k, v in clean.items())
            print(f"step {step}: {shown}", flush=True)

    def log_text(self, step: int, key: str, texts: list[str]) -> None:
        """Texts (samples) to TensorBoard's text plugin and one metrics.jsonl record."""
        if not self.active:
            return
        if self.writer is not None:
            self.writer.add_text(key, "\n\n".join(f"{i}: {t}" for i, t in enumerate(texts)), step)
        self.jsonl.write(json.dumps({"step": step, key: texts}) + "\n")
        if self.wandb is not None:
            self.wandb.log_text(step, key, texts)
        for i, text in enumerate(texts[:2]):
            print(f"step {step}: sample {i}: {text[:160]}", flush=True)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def gradient_variance_probe(module: torch.nn.Module, loss_fn, x0_batches: list[torch.Tensor], num_buckets: int,
                            samples: int, seed: int, t_min: float) -> dict[str, float]:
    """Per t-bucket variance of the minibatch gradient (the paper's Fig 3 diagnostic).

    For bucket b the times are drawn uniformly in [b/B, (b+1)/B) (clamped to t_min); each of
    ``samples`` micro-batches gives a gradient g_i, and we report
    tr Cov(g) = E||g_i||^2 - ||E g_i||^2 and the same normalised by ||E g||^2. Gradients come from
    torch.autograd.grad so ZeRO's gradient hooks and the .grad buffers are never touched, and all
    randomness comes from a generator seeded by ``seed``: the probe does not change the training run.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    gen = torch.Generator(device=x0_batches[0].device).manual_seed(seed)
    out = {}
    for b in range(num_buckets):
        mean = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        sq_norm = 0.0
        for i in range(samples):
            x0 = x0_batches[i % len(x0_batches)]
            u = torch.rand(x0.shape[0], generator=gen, device=x0.device)
            t = ((b + u) / num_buckets).clamp(min=t_min, max=1.0)
            loss = loss_fn(x0, t, gen)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for m, g in zip(mean, grads):
                if g is not None:
                    m.add_(g.float(), alpha=1.0 / samples)
            sq_norm += sum(float(g.float().pow(2).sum()) for g in grads if g is not None) / samples
        mean_norm = sum(float(m.pow(2).sum()) for m in mean)
        variance = max(sq_norm - mean_norm, 0.0)
        out[f"gradvar/bucket{b}"] = variance
        out[f"gradvar_rel/bucket{b}"] = variance / max(mean_norm, 1e-30)
    return out

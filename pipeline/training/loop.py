"""The training loop: one optimizer step = ``accum`` micro-batches on every rank, then a DeepSpeed step.

Reproducibility by construction: every random draw of step s on rank r, micro-step a is a pure
function of (seed, s, r, a) - diffusion times (pipeline.core.time_sampling), the corruption noise and
dropout (generators seeded by :func:`noise_seed`) - and the data order is streaming's deterministic
partition. A run resumed from a checkpoint therefore computes bit-identical losses (fp32 on CPU).

Loss normalisation: a loss of the form sum_i w_i l_i / D (Eq 120's denominator D = sum_i w_i, or
the number of real tokens for the NELBO-weighted loss) is normalised by D summed over the whole
global batch, all ranks and micro-steps (one all-reduce of a scalar before the forward), so the
gradient does not depend on how the batch is sharded.

Host synchronisation: a step reads device values back once, after the optimizer step (loss,
non-finite flag, stop flag, gradient norm in one transfer). The denominators, the loss numerators
and the all-reduces stay on the device, so on a GPU the micro-steps are queued without waiting
(DeepSpeed's step checks the gradient norm on the host once more; tests/unit/test_trainer_step.py
counts ours).
"""
from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.common import faults
from pipeline.core.likelihood import tightest
from pipeline.core.objectives import Objective
from pipeline.core.time_sampling import TimeSampler, TimeSamplerConfig, bound_times, step_seed

from . import checkpoint as ckpt
from .config import TrainConfig
from .ema import EMA
from .metrics import STEP_PHASES, MetricsLogger, StepTimer, gradient_variance_probe, model_flops_utilization

FINISHED = "finished.json"
STOP_FILE = "STOP"
_PROBE_SALT = 0x5EED_0001
_VAL_SALT = 0x5EED_0002


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        return self.all_reduce_sum_(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()

    def all_reduce_sum_(self, buf: torch.Tensor) -> torch.Tensor:
        """Sum ``buf`` over the ranks in place, on its device (NCCL reduces CUDA tensors only); no host sync."""
        if self.world_size > 1:
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def noise_seed(seed: int, step: int, rank: int, micro_step: int, world_size: int, accum: int) -> int:
    """Seed of the corruption / dropout generator of one micro-batch (unique over the whole run)."""
    return step_seed(seed, (step * accum + micro_step) * world_size + rank)


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then constant or cosine down to min_lr_ratio * lr."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class NonFiniteAbort(RuntimeError):
    """Too many consecutive non-finite steps; a checkpoint of the last state was written."""


class StopFlag:
    """Checkpoint at the next step and exit: set by SIGUSR1/SIGTERM (SLURM's time-limit warning) or by a
    file ``RUN_DIR/STOP`` (what slurm/train.sh touches; works whatever launcher sits between)."""

    def __init__(self, stop_file: Path, watch_file: bool):
        self.signalled = False
        self.stop_file, self.watch_file = stop_file, watch_file
        if watch_file and stop_file.exists():
            stop_file.unlink()  # a request of the previous job, already honoured
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    @property
    def raised(self) -> bool:
        return self.signalled or (self.watch_file and self.stop_file.exists())


class Trainer:
    def __init__(self, cfg: TrainConfig, engine, objective: Objective, stream, val_set, env: Dist, run_dir: Path,
                 identity: dict, marker_base: dict, flops_per_token: float, seq_len: int, pad_id: int | None,
                 universal: bool = False, samples=None):
        self.cfg, self.engine, self.objective, self.stream, self.val_set = cfg, engine, objective, stream, val_set
        self.env, self.run_dir, self.identity, self.marker_base = env, run_dir, identity, marker_base
        self.flops_per_token, self.seq_len, self.pad_id, self.universal = flops_per_token, seq_len, pad_id, universal
        self.samples = samples  # TrainingSamples on rank 0 when sample_every > 0, else None
        self.accum = cfg.accum_steps(env.world_size)
        # The AR baseline shares data, optimisation, EMA and checkpoints; only the objective differs.
        self.autoregressive = objective.autoregressive
        self.sampler = TimeSampler(TimeSamplerConfig(cfg.global_batch, env.world_size, self.accum, cfg.t_min,
                                                     cfg.antithetic_t, cfg.seed))
        self.ema = EMA(engine.module, cfg.ema_decay)
        wandb = (dict(project=cfg.wandb_project, mode=cfg.wandb_mode, config=cfg.to_dict())
                 if "wandb" in cfg.loggers else None)
        self.logger = MetricsLogger(run_dir, env.rank, "tensorboard" in cfg.loggers, wandb=wandb)
        self.timer = StepTimer(synchronize=env.device.type == "cuda")
        self.step = 0
        self.tokens_seen = 0
        self.consecutive_bad = 0
        self.bad_total = 0
        self.stop = StopFlag(run_dir / STOP_FILE, watch_file=env.rank == 0)
        self.ids_file = run_dir / f"sample_ids_rank{env.rank}.jsonl"

    # ------------------------------------------------------------------ checkpoints
    def client_state(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "dataloader": self.stream.state_dict(),
                "rng": ckpt.rng_state(), "ema": self.ema.state_dict(), "identity": self.identity,
                "identity_hash": self.marker_base["identity_hash"], "config": self.cfg.to_dict(),
                "world_size": self.env.world_size, "bad_steps_total": self.bad_total}

    def save(self) -> None:
        marker = {**self.marker_base, "tokens_seen": self.tokens_seen, "world_size": self.env.world_size}
        tag = ckpt.save_checkpoint(self.engine, self.run_dir, self.step, self.client_state(), marker, self.env.rank,
                                   self.cfg.keep_last, self.env.barrier)
        if self.env.rank == 0:
            print(f"checkpoint {tag} saved to {ckpt.checkpoint_dir(self.run_dir)}", flush=True)

    def maybe_resume(self) -> None:
        tag = ckpt.latest_tag(self.run_dir, universal=self.universal)
        if tag is None:
            if self.universal:
                raise FileNotFoundError(f"--universal: {ckpt.checkpoint_dir(self.run_dir)}/{ckpt.UNIVERSAL_LATEST} "
                                        "is missing (see docs/training.md for ds_to_universal)")
            self._truncate_ids_log(0)
            return
        if not self.universal:
            ckpt.check_identity(ckpt.read_marker(self.run_dir, tag)["identity"], self.identity, str(self.run_dir))
            ckpt.check_files(self.run_dir, tag)  # a truncated file: one clear line, not DeepSpeed's traceback
        state = ckpt.load_checkpoint(self.engine, self.run_dir, tag, self.env.rank, self.env.world_size,
                                     self.universal)
        ckpt.check_identity(state["identity"], self.identity, str(self.run_dir))
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.bad_total = int(state.get("bad_steps_total", 0))
        self.stream.load_state_dict(state["dataloader"])
        self._apply_lr_config()
        self.ema.load_state_dict(state["ema"])
        ckpt.set_rng_state(state["rng"])
        self._truncate_ids_log(self.step)
        if self.env.rank == 0:
            print(f"resumed from {tag} (step {self.step}, {self.tokens_seen:,} tokens seen)", flush=True)

    def _apply_lr_config(self) -> None:
        """After a resume the LR follows the *current* config (lr, warmup, schedule, max_steps).

        The scheduler state restores the old base lr and the optimizer the last lr it set; both are
        recomputed here, which changes nothing when the config is unchanged (exact resume) and makes
        an edited lr or horizon take effect from the first resumed step.
        """
        scheduler, optimizer = self.engine.lr_scheduler, self.engine.optimizer
        scheduler.base_lrs = [self.cfg.lr for _ in scheduler.base_lrs]
        for group in optimizer.param_groups:
            group["lr"] = self.cfg.lr * lr_multiplier(scheduler.last_epoch, self.cfg)

    def _truncate_ids_log(self, step: int) -> None:
        """Drop sample-id records of steps after the checkpoint (they are about to be redone)."""
        if not self.cfg.log_sample_ids or not self.ids_file.exists():
            return
        kept = [line for line in self.ids_file.read_text().splitlines()
                if line and json.loads(line)["step"] <= step]
        self.ids_file.write_text("".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ one step
    def _real(self, x0: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x0, dtype=torch.bool) if self.pad_id is None else x0 != self.pad_id

    def _prepare_micro_batches(self) -> tuple[list, list[int], torch.Tensor]:
        env, micro = self.env, []
        ids: list[int] = []
        denominator = torch.zeros((), dtype=torch.float64, device=env.device)  # summed on the device: no sync
        for a in range(self.accum):
            with self.timer.phase("data_wait"):
                batch = self.stream.next()
            x0 = batch["tokens"].to(env.device, non_blocking=True)
            ids += [int(i) for i in batch["sample_id"]]
            seed = noise_seed(self.cfg.seed, self.step, env.rank, a, env.world_size, self.accum)
            with self.timer.phase("corruption"):
                gen = torch.Generator(device=env.device).manual_seed(seed)
                t = None if self.autoregressive else self.sampler.sample(self.step, env.rank, a, device=env.device)
                batch = self.objective.prepare(x0, self._real(x0), t, generator=gen)
            micro.append((x0, batch, seed))
            denominator += batch.denominator.to(torch.float64)
        return micro, ids, denominator

    def train_step(self) -> dict:
        env, engine = self.env, self.engine
        faults.point("step.begin", self.step + 1, env.rank)
        micro, ids, global_den = self._prepare_micro_batches()
        env.all_reduce_sum_(global_den)
        # undo DeepSpeed's mean over ranks / micro-steps; float32 as the python scalar it replaces was applied
        scale = (env.world_size * self.accum / global_den.clamp_min(1e-12)).to(torch.float32)
        local_num = torch.zeros((), dtype=torch.float64, device=env.device)
        for a, (_, batch, seed) in enumerate(micro):
            with self.timer.phase("forward_backward"):
                torch.manual_seed(seed)  # dropout: a pure function of (seed, step, rank, micro-step)
                num, _ = self.objective.loss_terms(self.objective.logits(engine, batch), batch)
                faults.point("step.forward", self.step + 1, env.rank)
                engine.backward(num * scale)
                faults.point("step.backward", self.step + 1, env.rank)
            local_num += num.detach().to(torch.float64)  # non-finite if any micro-step is
            with self.timer.phase("optimizer" if a == self.accum - 1 else "forward_backward"):
                engine.step()  # a no-op except at the accumulation boundary
        finite = torch.isfinite(local_num)
        stop = torch.full((), float(self.stop.raised), dtype=torch.float64, device=env.device)  # a fill, no copy
        reduced = env.all_reduce_sum_(torch.stack([torch.where(finite, local_num, 0.0), (~finite).to(torch.float64),
                                                   stop]))
        grad_norm = engine.get_global_grad_norm()
        readback = [reduced, global_den.view(1)]
        if isinstance(grad_norm, torch.Tensor):  # one transfer to the host for the whole step
            readback.append(grad_norm.detach().to(reduced).view(1))
        num_sum, bad_ranks, stop, global_den, *norm = torch.cat(readback).tolist()
        if not isinstance(grad_norm, torch.Tensor):
            norm = [] if grad_norm is None else [float(grad_norm)]
        applied = engine.was_step_applied() and bad_ranks == 0
        self.step += 1
        self.tokens_seen += self.cfg.global_batch * self.seq_len
        if applied:
            with self.timer.phase("ema"):
                self.ema.update(engine.module)
            self.consecutive_bad = 0
        else:
            self.consecutive_bad += 1
            self.bad_total += 1
        if self.cfg.log_sample_ids:
            with open(self.ids_file, "a") as fh:
                fh.write(json.dumps({"step": self.step, "ids": ids}) + "\n")
        loss = num_sum / max(global_den, 1e-12) if bad_ranks == 0 else float("nan")
        return {"loss": loss, "applied": applied, "stop": stop > 0, "micro": micro,
                "grad_norm": norm[0] if norm else None}

    # ------------------------------------------------------------------ validation and probe
    def ema_model(self) -> torch.nn.Module:
        """A fresh eval-mode model holding the EMA weights (what an export would hold)."""
        from pipeline.core.model import build_model

        model = build_model(self.engine.module.cfg).to(self.env.device).eval()
        model.load_state_dict(dict(zip(self.ema.names, self.ema.shadow)), strict=True)
        for name, buffer in self.engine.module.named_buffers():  # the clean support is a buffer, not a weight
            model.get_buffer(name).copy_(buffer)
        model.posterior_reading = getattr(self.objective, "reading", None)  # samples read it as the bounds do
        return model

    @torch.no_grad()
    def validate(self) -> dict:
        """The objective's bound on the validation batches with the EMA weights, in nats per token."""
        model = self.ema_model()
        gen = torch.Generator(device=self.env.device).manual_seed(step_seed(self.cfg.seed, _VAL_SALT + self.env.rank))
        # every rank reduces the same names, also one whose slice of the validation set is empty
        names = self.objective.bound_names(self.cfg.val_bound, self.cfg.val_num_steps)
        totals = dict.fromkeys(names, 0.0)
        tokens = 0.0
        for x0 in self.val_set.batches():
            x0 = x0.to(self.env.device)
            real = self._real(x0)
            t = weight = None
            if not self.autoregressive:  # one t per sequence (used by the continuous-time bounds), as evaluated
                u = torch.rand(x0.shape[0], generator=gen, device=x0.device, dtype=torch.float64)
                t, weight = bound_times(u, "defensive", self.cfg.t_min)
                t = t.float()
            kwargs = {"t_weight": weight} if weight is not None else {}
            bounds = self.objective.bound_estimates(model, x0, real, bound=self.cfg.val_bound, t=t, generator=gen,
                                                    num_steps=self.cfg.val_num_steps, mc_steps=self.cfg.val_mc_steps,
                                                    **kwargs)
            for name, nats in bounds.items():
                totals[name] += float(nats.sum())
            tokens += float(self.objective.scored_tokens(real))
            faults.point("val.batch", self.step, self.env.rank)
        *sums, tokens = self.env.all_reduce_sum([totals[n] for n in names] + [tokens])
        _, nats = tightest(dict(zip(names, sums)))  # the evaluation's choice, on the validation batches
        nelbo = nats / max(tokens, 1.0)
        return {"val/nelbo": nelbo, "val/ppl": math.exp(min(nelbo, 50.0))}

    def probe(self, micro) -> dict:
        if self.env.rank != 0 or self.autoregressive or hasattr(next(self.engine.module.parameters()), "ds_tensor"):
            return {}  # rank-local diffusion diagnostic; skipped under ZeRO-3 (partitioned parameters)
        module = self.engine.module

        def loss_fn(x0, t, gen):
            batch = self.objective.prepare(x0, self._real(x0), t, generator=gen)
            num, den = self.objective.loss_terms(self.objective.logits(module, batch), batch)
            return num / den.clamp_min(1e-12)

        fork = [torch.get_rng_state()]
        try:
            return gradient_variance_probe(module, loss_fn, [m[0] for m in micro], self.cfg.probe_buckets,
                                           self.cfg.probe_samples, step_seed(self.cfg.seed, _PROBE_SALT + self.step),
                                           self.cfg.t_min)
        finally:
            torch.set_rng_state(fork[0])

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        cfg, env = self.cfg, self.env
        self.maybe_resume()
        window_start, window_steps = time.perf_counter(), 0
        while self.step < cfg.max_steps:
            lr = self.engine.get_lr()[0]  # the rate this step uses (the scheduler moves on in step())
            out = self.train_step()
            window_steps += 1
            values = {"train/loss": out["loss"], "train/lr": lr,
                      "train/bad_steps_total": self.bad_total}
            if out["grad_norm"] is not None:
                values["train/grad_norm"] = out["grad_norm"]
            if cfg.probe_every and self.step % cfg.probe_every == 0:
                values.update(self.probe(out["micro"]))
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                elapsed = time.perf_counter() - window_start
                phases = self.timer.pop()
                total = sum(phases.values()) or elapsed
                tps = window_steps * cfg.global_batch * self.seq_len / max(elapsed, 1e-9)
                values.update({"perf/tokens_per_s": tps, "perf/step_time_s": elapsed / window_steps})
                for phase in STEP_PHASES:
                    values[f"perf/{phase}_share"] = phases.get(phase, 0.0) / total
                if env.device.type == "cuda":
                    values["perf/mfu"] = model_flops_utilization(tps, self.flops_per_token, cfg.peak_flops,
                                                                 env.world_size)
                window_start, window_steps = time.perf_counter(), 0
            if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.max_steps):
                values.update(self.validate())
            if self.samples is not None and self.step % cfg.sample_every == 0:
                with torch.random.fork_rng(devices=[]):  # build_model draws initial weights: keep training's RNG
                    metrics, texts = self.samples.draw(self.ema_model(), self.step)
                values.update(metrics)
                self.logger.log_text(self.step, "samples/text", texts)
            self.logger.log(self.step, values, console=self.step % cfg.log_every == 0 or "val/nelbo" in values)
            if self.consecutive_bad >= cfg.max_bad_steps:
                self.save()
                raise NonFiniteAbort(f"{self.consecutive_bad} consecutive non-finite steps at step {self.step}; "
                                   "checkpoint saved, aborting (lower lr or check the data)")
            periodic = cfg.ckpt_every and (self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps)
            if periodic or out["stop"]:
                self.save()
            if out["stop"]:
                if env.rank == 0:
                    print(f"stop signal received: checkpointed at step {self.step}, exiting for requeue", flush=True)
                self.logger.close()
                return 0
        if env.rank == 0:  # slurm/train.sh requeues a job until this file exists
            finished = {"step": self.step, "tokens_seen": self.tokens_seen}
            (self.run_dir / FINISHED).write_text(json.dumps(finished) + "\n")
        self.logger.close()
        return 0

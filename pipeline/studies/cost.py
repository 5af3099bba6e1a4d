"""What a study's cells cost (``--dry-run``): FLOPs from the model, time from a stated throughput.

FLOPs per token are ``pipeline.core.model.flops_per_token`` (training: forward + backward; one forward
is a third of it). Times assume, per docs/scaling.md, MFU 45 % of an A100's 312 TFLOP/s bf16 peak on
GPU, and on CPU the rate measured for the tiny preset on this project's 2-core machine (60 GFLOP/s:
4,812 tokens/s at 12.6 MFLOP/token, docs/study.md). Estimates, printed as such.
"""
from __future__ import annotations

from functools import cache

from pipeline.core.kernel_config import traits_of
from pipeline.core.model import flops_per_token

from .spec import StudySpec

A100_PEAK, MFU = 312e12, 0.45
CPU_FLOPS = 60e9  # 2 cores, tiny preset, measured (docs/study.md)
# On CPU a tiny model's step is not only the model's FLOPs: the kernel's own work (corruption, its rates and
# bound, the sampler's sparse reverse step) is a large share. Measured seconds over projected seconds, per
# kernel, in the cpu study (docs/study_cpu.md: training 1,500 steps, evaluation, penalty grid); not applied on
# GPU, where at the paper's 0.1B the model's FLOPs dominate. None is the AR baseline.
CPU_TRAIN_FACTOR = {None: 0.94, "mask": 0.90, "uniform": 0.99, "semdlm": 1.18, "semdlm_softmax": 1.18,
                    "semdlm_plus": 1.18}
CPU_EVAL_FACTOR = {None: 0.5, "mask": 1.5, "uniform": 5.1, "semdlm": 8.5, "semdlm_softmax": 8.5, "semdlm_plus": 8.5}
CPU_ELBO_FACTOR = 1.7  # a non-absorbing kernel's own ELBO: 1.6-1.8x its change-aware step (measured, SemDLM+)
VOCAB = 30522  # bert-base-uncased, the paper's tokenizer


@cache
def _per_token(config: str, seq_len: int, overrides: tuple) -> float:
    from pipeline.training.config import load_config

    cfg = load_config(config, [f"{k}={v}" for k, v in overrides])
    return flops_per_token(cfg.model_config(vocab_size=VOCAB, seq_len=seq_len), seq_len)


def token_flops(spec: StudySpec) -> float:
    model_keys = tuple(sorted((k, v) for k, v in spec.train.overrides.items() if k.startswith("model")))
    return _per_token(spec.train.config, spec.data.seq_len, model_keys)


def train_flops(spec: StudySpec, steps: int) -> float:
    return token_flops(spec) * steps * spec.train.global_batch * spec.data.seq_len


def eval_flops(spec: StudySpec, steps, likelihood: bool = True) -> float:
    """Sampling (one forward per step per sample) plus the bound (one forward per sequence and t draw)."""
    forward = token_flops(spec) / 3 * spec.data.seq_len
    flops = forward * spec.eval.num_samples * sum(steps)
    if likelihood:
        flops += forward * (spec.eval.test_sequences or 1000) * spec.eval.t_draws
    return flops


def cpu_factor(kind: str, kernel: str | None, loss: str | None) -> float:
    """The measured CPU correction of a train / evaluate cell's FLOP projection (1 for every other cell)."""
    if kind == "train":
        factor = CPU_TRAIN_FACTOR.get(kernel, 1.0)
        own_elbo = loss == "elbo" and kernel is not None and not traits_of(kernel).absorbing
        return factor * (CPU_ELBO_FACTOR if own_elbo else 1.0)
    return CPU_EVAL_FACTOR.get(kernel, 1.0) if kind == "evaluate" else 1.0


def seconds(flops: float, gpus: int) -> float:
    """Wall seconds of ``flops`` on ``gpus`` A100s at MFU 45 % (0: the 2-core CPU rate)."""
    return flops / (gpus * A100_PEAK * MFU) if gpus else flops / CPU_FLOPS

"""Load a DeepSpeed JSON config and make it agree with the TrainConfig and the hardware.

The JSON files in ``ds_configs/`` choose the ZeRO stage, offloading and communication settings;
the batch geometry, optimizer hyper-parameters, clipping and precision always come from the
TrainConfig, so the two can never disagree:

* ``train_batch_size`` = global batch, ``train_micro_batch_size_per_gpu`` = micro batch,
  ``gradient_accumulation_steps`` = global / (micro * world);
* ``gradient_clipping`` = TrainConfig.grad_clip (the JSON must set it explicitly too, as a reminder
  that DeepSpeed's default is *no* clipping);
* precision ``auto``: bf16 autocast (fp32 master weights) when CUDA is available, fp32 on CPU (the
  CPU path is what makes bit-exact resume tests possible); fp16 is refused (the losses need bf16's
  range);
* on CPU, ZeRO-1/2's ``reduce_bucket_size`` is capped at ``CPU_REDUCE_BUCKET`` elements. DeepSpeed
  allocates its gradient buckets afresh for every backward (two of ``reduce_bucket_size`` elements with
  ``overlap_comm``) and frees them after it; CUDA's caching allocator recycles them, the CPU has none, so
  5e7-element buckets page-fault up to 400 MB of new memory every step (the DeepSpeed step of ``small``
  on one CPU rank: 7 % slower with them, of ``tiny``: 6 %; docs/benchmarks.md, Reference step).
  Buckets this small stay in the heap and are reused; gradients larger than a bucket bypass it
  (DeepSpeed reduces them in place). The reduction is elementwise, so the results do not depend on the
  bucket size. GPU configs are left as written. (Measured before the trainer kept freed memory in the
  heap, pipeline/common/cpu_host.py, which now stops those page faults too; the cap still keeps the
  memory that heap holds small.)
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from .config import TrainConfig

CPU_REDUCE_BUCKET = 1_000_000  # elements: 4 MB fp32 buckets on CPU (see the module docstring)


def resolve_precision(requested: str, cuda_available: bool) -> str:
    """``auto``: bf16 on GPU, fp32 on CPU (bf16 autocast also runs on CPU, slowly: useful for tests)."""
    if requested == "auto":
        return "bf16" if cuda_available else "fp32"
    return requested


def load_ds_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {str(path)!r} does not exist")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict) or not all(isinstance(config.get(k, {}), dict)
                                               for k in ("fp16", "bf16", "zero_optimization", "optimizer")):
        raise ValueError(f"{path}: a DeepSpeed config is a JSON object whose fp16, bf16, zero_optimization and "
                         "optimizer entries are objects")
    if "gradient_clipping" not in config:
        raise ValueError(f"{path}: set gradient_clipping explicitly (DeepSpeed's default is no clipping)")
    if config.get("fp16", {}).get("enabled"):
        raise ValueError(f"{path}: fp16 is not supported; precision is chosen by TrainConfig.precision")
    return config


def patch_ds_config(config: dict, cfg: TrainConfig, world_size: int, cuda_available: bool) -> dict:
    """A copy of ``config`` consistent with ``cfg`` on ``world_size`` ranks."""
    out = copy.deepcopy(config)
    accum = cfg.accum_steps(world_size)
    out["train_batch_size"] = cfg.global_batch
    out["train_micro_batch_size_per_gpu"] = cfg.micro_batch
    out["gradient_accumulation_steps"] = accum
    out["gradient_clipping"] = cfg.grad_clip
    precision = resolve_precision(cfg.precision, cuda_available)
    # bf16 = torch autocast with fp32 master weights (DeepSpeed's "torch_autocast"), as MDLM's
    # bf16-mixed: the model keeps LayerNorm, the time embedding and the logits in fp32 itself,
    # and gradients of the autocast Linear layers are reduced in bf16.
    out["bf16"] = {"enabled": False}
    out["torch_autocast"] = {"enabled": precision == "bf16", "dtype": "bfloat16"}
    out.pop("fp16", None)
    out.pop("scheduler", None)  # the LR schedule is ours (warmup + constant/cosine), see loop.py
    zero = out.setdefault("zero_optimization", {"stage": 0})
    if not cuda_available:
        # Offloading to the CPU from the CPU is meaningless and needs the cpu_adam extension.
        zero.pop("offload_optimizer", None)
        zero.pop("offload_param", None)
        if zero.get("stage", 0) in (1, 2):
            zero["reduce_bucket_size"] = min(int(zero.get("reduce_bucket_size", 5e8)), CPU_REDUCE_BUCKET)
    if "offload_optimizer" in zero:
        # ZeRO-Offload needs DeepSpeed's own CPU Adam: let DeepSpeed build it from the JSON.
        optimizer = out.setdefault("optimizer", {"type": "AdamW", "params": {}})
        optimizer.setdefault("params", {}).update(lr=cfg.lr, betas=list(cfg.betas), eps=cfg.adam_eps,
                                                  weight_decay=cfg.weight_decay)
    else:
        # Otherwise torch's AdamW (fused on GPU) is passed in by the trainer: no JIT-built extension.
        out.pop("optimizer", None)
    out.setdefault("steps_per_print", 10 ** 9)  # we log ourselves (DeepSpeed's monitor only logs lr)
    out.setdefault("wall_clock_breakdown", False)
    return out

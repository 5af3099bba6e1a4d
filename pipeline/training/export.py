"""Export a training run's checkpoint (EMA or raw weights) as an export artifact."""
from __future__ import annotations

from pathlib import Path

from pipeline.common.export_artifact import save_export
from pipeline.core.model import build_model


def export_run(run_dir, out_dir, tag: str | None = None, use_ema: bool = True, force: bool = False,
               break_lock: bool = False) -> Path:
    """Export a checkpoint of a training run directory (see pipeline.training.checkpoint)."""
    from pipeline.training.checkpoint import read_checkpoint_for_export

    ckpt = read_checkpoint_for_export(Path(run_dir), tag=tag, use_ema=use_ema)
    return save_export(out_dir, build_model(ckpt.model_cfg), ckpt.model_cfg, ckpt.kernel_cfg, ckpt.tokenizer_info,
                       ckpt.artifacts, ckpt.kind, force=force, training=ckpt.training, state_dict=ckpt.weights,
                       break_lock=break_lock)

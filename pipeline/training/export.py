"""Export a training run's checkpoint (EMA or raw weights) as an export artifact (and a transformers model)."""
from __future__ import annotations

from pathlib import Path

from pipeline.common.export_artifact import save_export
from pipeline.core.model import build_model


def export_run(run_dir, out_dir, tag: str | None = None, use_ema: bool = True, force: bool = False,
               break_lock: bool = False, tokenizer: str | None = None, evaluation=None) -> Path:
    """Export a checkpoint of a training run directory (see pipeline.training.checkpoint).

    The tokenizer files come from ``tokenizer`` (default: the one the run recorded; its vocabulary must
    be the run's); ``evaluation`` (an evaluation artifact of these weights) puts its bounds on the card.
    """
    from pipeline.common.hf_export import load_export_tokenizer
    from pipeline.common.model_card import read_evaluation
    from pipeline.training.checkpoint import read_checkpoint_for_export

    ckpt = read_checkpoint_for_export(Path(run_dir), tag=tag, use_ema=use_ema)
    summary = read_evaluation(evaluation) if evaluation is not None else None
    hf_tokenizer = load_export_tokenizer(ckpt.tokenizer_info, tokenizer, ckpt.model_cfg.max_seq_len)
    return save_export(out_dir, build_model(ckpt.model_cfg), ckpt.model_cfg, ckpt.kernel_cfg, ckpt.tokenizer_info,
                       ckpt.artifacts, ckpt.kind, force=force, training=ckpt.training, state_dict=ckpt.weights,
                       break_lock=break_lock, hf_tokenizer=hf_tokenizer, evaluation=summary)

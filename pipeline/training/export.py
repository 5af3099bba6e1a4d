"""Export a training run's checkpoint (EMA or raw weights) as an export artifact (and a transformers model)."""
from __future__ import annotations

from pathlib import Path

from pipeline.common.export_artifact import ExportExistsError, export_stage, write_export


def export_run(run_dir, out_dir, tag: str | None = None, use_ema: bool = True, force: bool = False,
               break_lock: bool = False, tokenizer: str | None = None, evaluation=None) -> tuple[Path, bool]:
    """Export a checkpoint of a training run directory (see pipeline.training.checkpoint): (directory, written).

    The tokenizer files come from ``tokenizer`` (default: the one the run recorded; its vocabulary must
    be the run's); ``evaluation`` (an evaluation artifact of these weights) puts its bounds on the card.
    An existing export of the same checkpoint file with the same options is up to date and kept (written
    False); one of the same run (an older checkpoint, other options) is rewritten, as any stage rebuilds a
    stale artifact; any other ``out_dir`` (another run's export, not an export) is refused unless ``force``.
    """
    from pipeline.common.hf_export import load_export_tokenizer
    from pipeline.common.model_card import read_evaluation
    from pipeline.training.checkpoint import read_checkpoint_for_export

    ckpt = read_checkpoint_for_export(Path(run_dir), tag=tag, use_ema=use_ema)
    summary = read_evaluation(evaluation) if evaluation is not None else None
    training = {**ckpt.training, "tokenizer_source": tokenizer}  # None: the run's own
    run = export_stage(out_dir, ckpt.model_cfg, ckpt.kernel_cfg, ckpt.tokenizer_info, ckpt.artifacts, ckpt.kind,
                       training=training, evaluation=summary, sources=[ckpt.states_file], force=force,
                       break_lock=break_lock, posterior=ckpt.posterior)
    if run.is_up_to_date():
        return run.out_dir, False
    if not force and Path(out_dir).exists() and _exported_run(out_dir) != training["run_dir"]:
        raise ExportExistsError(f"{out_dir} exists and is not an export of {training['run_dir']}; pass --force to "
                                "overwrite it")
    hf_tokenizer = load_export_tokenizer(ckpt.tokenizer_info, tokenizer, ckpt.model_cfg.max_seq_len)
    return write_export(run, ckpt.weights, hf_tokenizer, summary), True


def _exported_run(out_dir) -> str | None:
    """The run directory an existing export was made from (None: not a complete export of a run)."""
    from pipeline.common.artifacts import ArtifactError, load_manifest

    try:
        return (load_manifest(out_dir, stage="export")["config"].get("training") or {}).get("run_dir")
    except (ArtifactError, AttributeError):
        return None

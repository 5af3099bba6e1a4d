"""The training curve of the run an export came from, for the evaluation report: did the model learn?

An export's manifest lists the checkpoint it was read from (``RUN/checkpoints/global_stepN/...``); when
that run directory is still on this machine its ``metrics.jsonl`` gives the training loss and the
validation bound against step. The report plots both and states the first and last validation bound
beside the training data's unigram entropy. A run directory that is gone leaves the curve out (the
export itself is self-contained; the curve is context, not a result).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.common.run_metrics import read_metrics, series

MAX_TRAIN_POINTS = 200  # the training loss is thinned to about this many points (one per log_every step)


def run_dir_of(export_dir: Path) -> Path | None:
    """The training run an export was read from, when its directory and metrics are still here."""
    from pipeline.common.artifacts import load_manifest

    manifest = load_manifest(export_dir)
    for entry in manifest.get("inputs") or []:
        path = Path(entry.get("path", ""))
        if "checkpoints" in path.parts:
            run = Path(*path.parts[:path.parts.index("checkpoints")])
            if (run / "metrics.jsonl").is_file():
                return run
    return None


def training_curve(export_dir: Path) -> dict | None:
    """{"run", "val": [[step, bound]], "train_loss": [[step, loss]]} of the export's run, or None."""
    run = run_dir_of(Path(export_dir))
    if run is None:
        return None
    rows = read_metrics(run / "metrics.jsonl")
    val = [list(p) for p in series(rows, "val/nelbo")]
    train = [list(p) for p in series(rows, "train/loss")]
    stride = max(1, len(train) // MAX_TRAIN_POINTS)
    return {"run": str(run), "val": val, "train_loss": train[::stride]} if val or train else None


def plot_training_curve(curve: dict, unigram_entropy: float | None, path: Path) -> None:
    """Training loss and validation bound (nats/token) against step, the unigram entropy as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if curve["train_loss"]:
        ax.plot(*zip(*curve["train_loss"]), linewidth=0.8, alpha=0.6, label="training loss")
    if curve["val"]:
        ax.plot(*zip(*curve["val"]), marker="o", label="validation bound")
    if unigram_entropy is not None:
        ax.axhline(unigram_entropy, color="grey", linestyle="--", linewidth=1, label="training unigram entropy")
    ax.set_xlabel("step")
    ax.set_ylabel("nats/token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curve_line(curve: dict, unigram_entropy: float | None) -> str:
    """One sentence: the validation bound from its first to its last point, against the unigram entropy."""
    if not curve["val"]:
        return f"Training curve of `{curve['run']}` (no validation points): learning_curve.png."
    (s0, v0), (s1, v1) = curve["val"][0], curve["val"][-1]
    against = (f", {'below' if v1 < unigram_entropy else 'above'} the training data's unigram entropy "
               f"{unigram_entropy:.4g}" if unigram_entropy is not None else "")
    return (f"Training curve of `{curve['run']}` (learning_curve.png): validation bound {v0:.4g} at step {s0}, "
            f"{v1:.4g} at step {s1}{against}.")

"""The unigram reference beside a test bound: does the model know more than token frequencies?

A model has learned something about text only once its bound is below what the training data's unigram
distribution alone achieves. Two numbers make that concrete (docs/sampling.md, Evaluation):

* ``train_entropy``: the entropy of the training split's unigram distribution (nats/token), the figure
  a study's "every model learns" check compares against;
* ``nats_per_token``: the held-out cross-entropy of the very tokens the bound scored under that
  distribution, smoothed by ``UNIGRAM_SMOOTHING`` so an unseen test token costs finite nats. The bound
  and this figure score the same tokens: their difference is judged by its paired standard error over
  sequences (standard_errors.py), which holds the bound's Monte Carlo error and the sampling of the test
  sequences, with the difficulty a sequence has for both cancelled.

A bound below these figures is sufficient evidence of learning, not necessary: frequency_floor.py gives the
kernel's own bound for a frequency-only model, the reference for kernels whose bound is loose.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

# Add-1/2 (Krichevsky-Trofimov): the smallest standard pseudo-count that keeps an unseen token finite;
# add-one would take ~3 % of the mass from seen tokens on a 0.5M-token training split of a 30k vocabulary.
UNIGRAM_SMOOTHING = 0.5


def training_counts(export_config: dict) -> np.ndarray | None:
    """The unigram counts of the data an export was trained on (its preprocessed artifact's training split;
    None when the export names none or it is not on this machine: the reference is then left out)."""
    preprocessed = (export_config.get("artifacts") or {}).get("preprocessed")
    path = Path(preprocessed) / "unigram_counts.npy" if preprocessed else None
    return np.load(path, allow_pickle=False) if path is not None and path.is_file() else None


def unigram_entropy_of_counts(counts: np.ndarray) -> float:
    """Entropy (nats) of the unigram distribution counts / sum(counts)."""
    p = counts[counts > 0].astype(np.float64) / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_log_probs(counts: np.ndarray) -> np.ndarray:
    """log p_unigram(v) from training counts, ``UNIGRAM_SMOOTHING``-smoothed, [V] float64."""
    counts = counts.astype(np.float64)
    return np.log(counts + UNIGRAM_SMOOTHING) - math.log(counts.sum() + UNIGRAM_SMOOTHING * len(counts))


def unigram_reference(counts: np.ndarray, sequences: torch.Tensor, scored: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """The unigram figures for the tokens ``sequences[scored]`` (see the module docstring), and the unigram
    nats of each sequence's scored tokens ([N], float64: for the paired standard error)."""
    log_p = unigram_log_probs(counts)
    ids = sequences[scored].cpu().numpy()
    per_sequence = torch.from_numpy(-log_p[sequences.cpu().numpy()]) * scored.cpu()
    return ({"train_entropy": unigram_entropy_of_counts(counts),
             "nats_per_token": float(-log_p[ids].mean()) if ids.size else float("nan"),
             "tokens": int(ids.size), "smoothing": f"add-{UNIGRAM_SMOOTHING:g}"}, per_sequence.sum(-1))


def learned_verdict(bound: float, paired_stderr: float | None, reference: dict) -> dict:
    """Whether the bound is below the unigram figures, by how much, and how many (paired) standard errors
    that is."""
    margin = reference["nats_per_token"] - bound
    return {"margin_nats": margin, "margin_stderr": paired_stderr,
            "margin_stderrs": margin / paired_stderr if paired_stderr else None,
            "below_train_entropy": bound < reference["train_entropy"],
            "below_unigram": bound < reference["nats_per_token"]}

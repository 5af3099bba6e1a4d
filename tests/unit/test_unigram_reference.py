"""The unigram reference beside a test bound (pipeline/evaluation/baselines.py), against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.evaluation.baselines import learned_verdict, unigram_entropy_of_counts, unigram_reference


def test_entropy_and_held_out_cross_entropy_by_hand():
    counts = np.array([3, 1, 0, 0])  # V = 4, N = 4
    assert unigram_entropy_of_counts(counts) == math.log(4) - 0.75 * math.log(3)
    seqs = torch.tensor([[0, 1, 2, 3], [0, 0, 3, 3]])
    scored = torch.tensor([[True, True, True, False], [True, True, False, False]])  # pads are not scored
    ref, per_sequence = unigram_reference(counts, seqs, scored)
    z = 4 + 0.5 * 4  # add-1/2 over the 4 tokens of the vocabulary
    first = -(math.log(3.5 / z) + math.log(1.5 / z) + math.log(0.5 / z))
    second = -2 * math.log(3.5 / z)
    assert math.isclose(ref["nats_per_token"], (first + second) / 5, rel_tol=1e-12) and ref["tokens"] == 5
    assert torch.allclose(per_sequence, torch.tensor([first, second], dtype=torch.float64), rtol=1e-12)


def test_verdict_in_standard_errors():
    ref = {"train_entropy": 7.0, "nats_per_token": 7.2}
    v = learned_verdict(6.9, 0.05, ref)
    assert v["below_train_entropy"] and v["below_unigram"] and math.isclose(v["margin_stderrs"], 6.0)
    assert v["margin_stderr"] == 0.05
    v = learned_verdict(7.1, None, ref)
    assert not v["below_train_entropy"] and v["below_unigram"] and v["margin_stderrs"] is None

"""The frequency floor (pipeline/evaluation/frequency_floor.py) against the exact toy: its denoiser is the
Bayes posterior of context-free data, so on data that *is* context-free its bound is the kernel's bound with
the exact posterior, and its slack is the bound's documented gap (docs/likelihood.md §6.6)."""
import math

import pytest
import torch

from pipeline.common.export_artifact import Exported
from pipeline.core.posterior import Reading
from pipeline.evaluation.frequency_floor import floor_applies, floor_comparison, frequency_export
from pipeline.research import bound_check as bc


def _exported(toy, reading: Reading) -> Exported:
    V = toy.kernel.vocab_size
    model = torch.nn.Linear(1, V)  # stands in for the network: only its clean-support bias is read
    clean = torch.where(toy.p_data > 0, 0.0, -math.inf).float()
    model.register_buffer("clean_bias", clean)
    return Exported(model, None, "diffusion", toy.kernel, {}, {}, 0, reading)


@pytest.mark.parametrize("kernel", ["uniform", "semdlm_plus"])
def test_floor_on_context_free_data_is_the_exact_posterior_bound(kernel):
    toy = bc.build_toy(kernel, vocab=20, k_max=4, valid=17, seed=3)
    counts = (toy.p_data * 1000).numpy()
    # a change-aware export: the floor must still read its frequencies as the exact posterior (no correction)
    floor = frequency_export(_exported(toy, Reading(False, math.log(10.0), 0)), counts)
    assert floor.reading == Reading(True, 0.0, 0)
    with_floor = bc.ctelbo_exact(toy, model=lambda xt, t: floor.model(xt, t).double(), reading=floor.reading)
    assert with_floor == pytest.approx(bc.ctelbo_exact(toy), abs=1e-6)  # the posterior's bound
    # exact_nll = the unigram cross-entropy of this data: the conditional-path ELBO keeps a gap above it
    assert with_floor > toy.exact_nll + 0.3
    if kernel == "uniform":  # UDLM's closed form is exact at this optimum: uniform's floor has no slack
        udlm = bc.udlm_exact(toy, model=lambda xt, t: floor.model(xt, t).double(), reading=floor.reading)
        assert udlm == pytest.approx(bc.udlm_exact(toy, model=bc.data_denoiser(toy)), abs=1e-7)
        assert udlm == pytest.approx(toy.exact_nll, abs=1e-4)  # (to the quadrature's accuracy)


def test_floor_is_not_computed_for_mask_and_compares_paired():
    mask = bc.build_toy("mask", vocab=20, k_max=4, valid=17, seed=3)
    assert not floor_applies(_exported(mask, Reading(False, 0.0, 0)))
    assert floor_applies(_exported(bc.build_toy("semdlm_plus", vocab=20, k_max=4, valid=17, seed=3), Reading()))
    seq = torch.tensor([10.0, 12.0, 9.0, 14.0], dtype=torch.float64)
    tokens = torch.tensor([5, 6, 4, 7])
    ours = {"nats_per_token": float(seq.sum() / tokens.sum()), "per_sequence": (seq, tokens),
            "unigram": {"nats_per_token": 2.0}}
    floor = {"bound": "ctelbo_continuous", "nats_per_token": float((seq + tokens).sum() / tokens.sum()),
             "stderr": 0.1, "candidates": {}, "per_sequence": (seq + tokens, tokens)}
    f = floor_comparison(ours, floor)
    assert f["margin_nats"] == pytest.approx(1.0) and f["margin_stderr"] == pytest.approx(0.0, abs=1e-12)
    assert f["slack"] == pytest.approx(floor["nats_per_token"] - 2.0) and f["below_floor"]

"""Generation past the model's context (SamplerConfig.length) and the stop rules, on the tiny model."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from test_conditional_generation import KERNELS, SEP
from test_sampling import MASK, Recorder, V, tiny_model

from pipeline.common.artifacts import ConfigError
from pipeline.sampling import SamplerConfig, generate
from pipeline.sampling.generate import low_entropy
from pipeline.sampling.runner import draw_samples
from pipeline.sampling.stage import SamplerOptions
from pipeline.sampling.template import prompt_template

PROMPT = [1, 2, 3]


@pytest.mark.parametrize("method,kernel", [("ctmc", "semdlm_plus"), ("ctmc", "mask"), ("mdlm", "mask"),
                                           ("blockwise", "uniform"), ("tau_leaping", "semdlm_plus")])
def test_three_windows_conditioned_across_strides(method, kernel):
    model = Recorder(tiny_model())
    cfg = SamplerConfig(method=method, steps=4, seq_len=16, strides=2, length=48)
    rows = prompt_template([PROMPT], 16).for_batch(0, 2)
    ids, den = generate(model, KERNELS[kernel](), cfg, 2, torch.Generator().manual_seed(0), template=rows)
    assert ids.shape == (2, 48) and ((ids >= 0) & (ids < V) & (ids != MASK)).all()
    assert ids[:, :3].tolist() == [PROMPT, PROMPT]  # the prompt is carried
    assert max(x.shape[1] for x in model.inputs) == 16  # the model never sees more than its window
    # every block past the first window was generated after the 8 tokens before it, as they ended up
    contexts = {tuple(x[:, :8].flatten().tolist()) for x in model.inputs if x.shape[1] == 16}
    for k in (16, 24, 32, 40):
        assert tuple(ids[:, k - 8:k].flatten().tolist()) in contexts, k
    assert den.entropy_cut is None


def test_without_length_nothing_changes():
    cfg = SamplerConfig(method="ctmc", steps=4, seq_len=16, strides=2)
    a, _ = generate(tiny_model(), KERNELS["uniform"](), cfg, 2, torch.Generator().manual_seed(0))
    b, _ = generate(tiny_model(), KERNELS["uniform"](), replace(cfg, length=32), 2,
                    torch.Generator().manual_seed(0))
    assert a.shape == (2, 16) and torch.equal(a, b[:, :16])  # the first window is the usual sample
    assert "length" not in cfg.to_dict() and "entropy_window" not in cfg.to_dict()  # earlier keys kept


def _loves(token: int):
    model = tiny_model()
    with torch.no_grad():
        model.head.bias[token] = 60.0  # every clean token is `token`
    return model


def test_entropy_stop_cuts_before_the_repetitive_window():
    prompt = [1, 2, 3, 4, 6, 8]
    cfg = SamplerConfig(method="ctmc", steps=4, seq_len=16, strides=2, length=48, entropy_stop=1.0, entropy_window=8)
    records = draw_samples(_loves(7), KERNELS["uniform"](), cfg, 2, 2, 0, progress=False,
                           template=prompt_template([prompt], 16))
    # after block 1 (positions 6-10) the last 8 tokens hold 3 prompt tokens: entropy 1.07 nats, go on; after
    # block 2 (to 16) they are all 7: stop, cut at 16 - 8 = 8; no block past the first window is drawn
    for rec in records:
        assert rec["stopped_at_entropy"] and rec["ids"] == prompt + [7, 7] and rec["length"] == 8
    # never into the prompt: a window longer than the generated part cuts at the prompt's end
    cfg = SamplerConfig(method="ctmc", steps=4, seq_len=16, strides=2, length=48, entropy_stop=3.0, entropy_window=16)
    rec = draw_samples(_loves(7), KERNELS["uniform"](), cfg, 1, 1, 0, progress=False,
                       template=prompt_template([prompt], 16))[0]
    assert rec["stopped_at_entropy"] and rec["ids"] == prompt


def test_eos_stop_past_the_window_ends_the_loop():
    cfg = SamplerConfig(method="ctmc", steps=4, seq_len=16, strides=2, length=64)
    model = Recorder(_loves(SEP))
    records = draw_samples(model, KERNELS["uniform"](), cfg, 2, 2, 0, progress=False,
                           template=prompt_template([PROMPT], 16), stop_id=SEP)
    assert all(r["ids"] == PROMPT + [SEP] and r["stopped_at_eos"] for r in records)
    assert max(x.shape[1] for x in model.inputs) <= 16 and len(model.inputs) <= 4 * 2  # one block's calls


def test_low_entropy_is_the_empirical_entropy_of_the_window():
    x = torch.tensor([[5, 5, 5, 5, 1, 2, 1, 2], [1, 1, 1, 1, 1, 1, 1, 1]])
    assert low_entropy(x, 4, math.log(2) + 1e-9).tolist() == [True, True]
    assert low_entropy(x, 4, math.log(2) - 1e-9).tolist() == [False, True]
    assert low_entropy(x, 9, 10.0).tolist() == [False, False]  # shorter than the window: never


def test_options_are_checked():
    with pytest.raises(ValueError, match="must exceed seq_len"):
        SamplerConfig(seq_len=16, length=16)
    with pytest.raises(ValueError, match="entropy_stop must be > 0"):
        SamplerConfig(seq_len=16, entropy_stop=0.0)
    with pytest.raises(ConfigError, match="--infill fixes the length"):
        SamplerOptions(infill="the [MASK] sat", length=256)

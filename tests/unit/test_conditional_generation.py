"""Conditional generation: templates (prompt / infill), fixed tokens in every sampler x kernel, stop at EOS."""
from __future__ import annotations

import json

import pytest
import torch
from test_sampling import MASK, Recorder, V, mask_kernel, semantic_kernel, tables, tiny_model

from pipeline.common.artifacts import ConfigError
from pipeline.core.kernels import KernelConfig, build_kernel
from pipeline.sampling import SamplerConfig, generate
from pipeline.sampling.conditioning import load_conditioning, stop_token_id
from pipeline.sampling.runner import draw_samples
from pipeline.sampling.stage import SamplerOptions
from pipeline.sampling.template import (
    GenerationTemplate,
    all_free,
    block_bounds,
    parse_infill,
    prompt_template,
    trim_at_stop,
)

SEP = 5  # the stop token of the tiny vocabulary


def uniform_kernel():
    return build_kernel(KernelConfig.preset("uniform"), V, mask_id=MASK)


KERNELS = {"mask": mask_kernel, "uniform": uniform_kernel, "semdlm_plus": semantic_kernel}


def mixed_template(seq_len=16) -> GenerationTemplate:
    """Prompts of 3 and 5 tokens, the second row also with fixed tokens inside both blocks."""
    t = prompt_template([[1, 2, 3], [4, 6, 7, 8, 9]], seq_len)
    tokens, free = t.tokens.clone(), t.free.clone()
    tokens[1, [10, 14]], free[1, [10, 14]] = torch.tensor([11, 12]), False
    return GenerationTemplate(tokens, free, t.start, "prompt", ("a", "b"))


# --------------------------------------------------------------------------- unconditional = all-free template
@pytest.mark.parametrize("method,kernel,extra", [
    ("ctmc", "semdlm_plus", {}), ("ctmc", "mask", {}), ("blockwise", "semdlm_plus", {"freeze_threshold": 0.5}),
    ("tau_leaping", "uniform", {}), ("mdlm", "mask", {}), ("mdlm", "mask", {"remask": "remdm_cap", "remask_eta": 0.2}),
    ("mdlm", "mask", {"schedule": "tc"}),
])
def test_all_free_template_draws_exactly_the_unconditional_ids(method, kernel, extra):
    cfg = SamplerConfig(method=method, steps=4, seq_len=16, strides=2, **extra)
    ids, den = generate(tiny_model(), KERNELS[kernel](), cfg, 3, torch.Generator().manual_seed(0))
    ids_t, den_t = generate(tiny_model(), KERNELS[kernel](), cfg, 3, torch.Generator().manual_seed(0),
                            template=all_free(3, 16))
    assert torch.equal(ids, ids_t) and den.calls == den_t.calls


# --------------------------------------------------------------------------- fixed tokens never change
@pytest.mark.parametrize("method,kernel,extra", [
    *[(m, k, {}) for m in ("ctmc", "blockwise", "tau_leaping") for k in ("mask", "uniform", "semdlm_plus")],
    ("mdlm", "mask", {}), ("mdlm", "mask", {"remask": "remdm_cap", "remask_eta": 0.5}),
    ("mdlm", "mask", {"schedule": "fixed"}), ("mdlm", "mask", {"schedule": "dtc"}),
])
def test_fixed_tokens_hold_at_every_step(method, kernel, extra):
    template = mixed_template()
    model = Recorder(tiny_model())
    cfg = SamplerConfig(method=method, steps=6, seq_len=16, strides=2, corrector_steps=1, **extra)
    ids, _ = generate(model, KERNELS[kernel](), cfg, 4, torch.Generator().manual_seed(0),
                      template=template.for_batch(0, 4))
    rows = template.for_batch(0, 4)
    for x in model.inputs + [ids]:  # every network input and the result
        L = x.shape[1]
        fixed = ~rows.free[:, :L]
        assert torch.equal(x[fixed], rows.tokens[:, :L][fixed])
    assert ids.shape == (4, 16) and ((ids >= 0) & (ids < V) & (ids != MASK)).all()
    # blocks start after the shortest prompt: the first network input is positions 0..2 + block 1
    assert model.inputs[0].shape[1] == block_bounds(16, 2, 3)[0][1] == 10


@pytest.mark.parametrize("method", ["ctmc", "tau_leaping", "blockwise"])
def test_fixed_special_token_outside_the_kernel_support(method):
    """A fixed [CLS] / [SEP] inside a block (an lm1b infill template): the semantic kernels give such a
    token no probability at t = 1, which must not break the rates of the free positions."""
    special = 0
    nb, vals, valid = tables()
    keep = nb != special
    nb, vals = nb.where(keep, (special + 1) % V), vals.where(keep, -1.0)
    valid[special] = False
    kernel = build_kernel(KernelConfig.preset("semdlm_plus", k_max=8), V, mask_id=MASK, neighbors=nb,
                          valid_vocab=valid, similarities=vals)
    template = prompt_template([[3], [3, 1, special, 2]], 16)
    cfg = SamplerConfig(method=method, steps=4, seq_len=16, strides=2)
    ids, _ = generate(tiny_model(), kernel, cfg, 2, torch.Generator().manual_seed(0), template=template)
    assert ids[1, :4].tolist() == [3, 1, special, 2] and (ids != MASK).all()


def test_mdlm_schedule_counts_free_positions_only():
    cfg = SamplerConfig(method="mdlm", schedule="fixed", steps=4, seq_len=16, strides=1)
    _, den = generate(tiny_model(), mask_kernel(), cfg, 2, torch.Generator().manual_seed(0),
                      template=prompt_template([[1, 2, 3], [4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]], 16))
    # the block spans 3..15: 13 free positions in row 0, 2 in row 1 (one per step, then nothing)
    assert den.last_schedule_sizes.tolist() == [[3, 3, 3, 4], [1, 1, 0, 0]]


def test_infill_keeps_the_right_context_and_generates_only_the_marks():
    free = [False, True, True, False, False, True, False]
    template = GenerationTemplate(torch.tensor([[1, 0, 0, 2, 3, 0, 4]]), torch.tensor([free]), 1, "infill", ("t",))
    model = Recorder(tiny_model())
    cfg = SamplerConfig(method="mdlm", steps=3, seq_len=7, strides=1)
    ids, _ = generate(model, mask_kernel(), cfg, 2, torch.Generator().manual_seed(0), template=template)
    assert all(x.shape[1] == 7 for x in model.inputs)  # one block: every call sees the whole template
    assert ids[:, [0, 3, 4, 6]].tolist() == [[1, 2, 3, 4]] * 2 and (ids != MASK).all()


# --------------------------------------------------------------------------- templates and tokenisation
def test_parse_infill_counts_and_errors():
    assert parse_infill("The [MASK]*5 sat on the mat") == ["The", 5, " sat on the mat"]
    assert parse_infill("[MASK] cat [MASK][MASK]*2.") == [1, " cat", 1, 2, "."]
    for bad, msg in (("a [MASK]*0 b", "at least one"), ("a [MASK]* b", "needs a count"),
                     ("a [MASK]*x", "needs a count"), ("no marks", "no \\[MASK\\]")):
        with pytest.raises(ValueError, match=msg):
            parse_infill(bad)


def test_block_bounds_nearly_equal():
    assert block_bounds(16, 2) == [(0, 8), (8, 16)]
    assert block_bounds(16, 2, 3) == [(3, 10), (10, 16)]
    assert block_bounds(16, 3, 4) == [(4, 8), (8, 12), (12, 16)]
    with pytest.raises(ValueError, match="cannot fill"):
        block_bounds(16, 4, 14)


def _manifest(tmp_path, mode):
    pre = tmp_path / mode
    pre.mkdir()
    special = {"cls": 101, "sep": 102, "separator": 1012 if mode == "owt" else 102, "pad": 0}
    (pre / "manifest.json").write_text(json.dumps({"config": {"mode": mode}, "special_ids": special}))
    return {"artifacts": {"preprocessed": str(pre)}}


def test_prompt_and_infill_are_framed_like_training_rows(tokenizer, tmp_path):
    from pipeline.common.hf_assets import tokenizer_info

    info = tokenizer_info(tokenizer)
    words = tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    bare = load_conditioning("the cat sat", None, {}, info)
    assert bare.rows == (tuple(words),)  # no preprocessed data named: no special tokens
    lm1b, owt = _manifest(tmp_path, "lm1b"), _manifest(tmp_path, "owt")
    assert load_conditioning("the cat sat", None, lm1b, info).rows == ((101, *words),)  # a row starts [CLS]
    assert load_conditioning("the cat sat", None, owt, info).rows == (tuple(words),)
    inf = load_conditioning(None, "the [MASK]*3 sat on the mat", lm1b, info)
    body = tokenizer("sat on the mat", add_special_tokens=False)["input_ids"]
    assert inf.rows[0] == (101, words[0], 0, 0, 0, *body, 102) and inf.length == 6 + len(body)
    assert inf.free == (False, False, True, True, True) + (False,) * (len(body) + 1)
    assert inf.template(inf.length).start == 2
    with pytest.raises(ConfigError, match="has 8 tokens, seq_len is 12"):
        load_conditioning(None, "the [MASK]*3 sat on the mat", {}, info).template(12)
    with pytest.raises(ConfigError, match="MASK"):
        load_conditioning("a [MASK] b", None, {}, info)
    with pytest.raises(ConfigError, match="nothing to generate"):
        load_conditioning("the cat sat", None, {}, info).template(3)
    assert stop_token_id(lm1b, info) == 102 and stop_token_id(owt, info) == 1012 and stop_token_id({}, info) == 102


def test_prompt_file_one_prompt_per_line(tokenizer, tmp_path):
    from pipeline.common.hf_assets import tokenizer_info

    path = tmp_path / "prompts.txt"
    path.write_text("the cat\n\n  a dog ran  \n")
    cond = load_conditioning(str(path), None, {}, tokenizer_info(tokenizer))
    assert cond.texts == ("the cat", "a dog ran") and len(cond.rows) == 2
    path.write_text("\n \n")
    with pytest.raises(ConfigError, match="no prompt"):
        load_conditioning(str(path), None, {}, tokenizer_info(tokenizer))


def test_sampler_options_conditioning_errors():
    assert SamplerOptions().strides == 2 and SamplerOptions(infill="a [MASK]").strides == 1
    with pytest.raises(ConfigError, match="--strides must be 1"):
        SamplerOptions(infill="a [MASK]", strides=2)
    with pytest.raises(ConfigError, match="exclude"):
        SamplerOptions(prompt="a", infill="a [MASK]")
    with pytest.raises(ConfigError, match="seq-len"):
        SamplerOptions(infill="a [MASK]", seq_len=16)
    with pytest.raises(ConfigError, match="stop-at-eos"):
        SamplerOptions(infill="a [MASK]", stop_at_eos=True)


# --------------------------------------------------------------------------- prompts over samples, stop at EOS
def test_samples_cycle_over_prompts_and_keep_them():
    template = prompt_template([[1, 2, 3], [4, 6]], 16, ("p0", "p1"))
    cfg = SamplerConfig(method="blockwise", steps=4, seq_len=16, strides=2)
    records = draw_samples(tiny_model(), semantic_kernel(), cfg, 5, 2, 0, progress=False, template=template)
    for rec in records:
        prompt = [[1, 2, 3], [4, 6]][rec["index"] % 2]
        assert rec["ids"][:len(prompt)] == prompt and rec["prompt"] == f"p{rec['index'] % 2}"
        assert len(rec["ids"]) == 16


class StopAt(torch.nn.Module):
    """A tiny model whose logits put (nearly) all mass on SEP at ``position`` of the rows in ``rows``
    (all rows when None) and none anywhere in the other rows."""

    def __init__(self, position, rows=None):
        super().__init__()
        self.model, self.position, self.rows = tiny_model(), position, rows
        self.cfg = self.model.cfg

    def forward(self, x, t):
        logits = self.model(x, t).clone()
        rows = torch.ones(x.shape[0], dtype=torch.bool)
        if self.rows is not None:
            rows[:] = False
            rows[self.rows] = True
        logits[~rows, :, SEP] = -100.0
        if x.shape[1] > self.position:  # the network sees the blocks generated so far
            logits[rows, self.position, SEP] = 100.0
        return logits


@pytest.mark.parametrize("method,kernel", [("mdlm", mask_kernel), ("blockwise", semantic_kernel)])
def test_stop_at_eos_trims_and_skips_the_remaining_blocks(method, kernel):
    cfg = SamplerConfig(method=method, steps=8, seq_len=16, strides=4)
    full, den_full = generate(StopAt(5), kernel(), cfg, 3, torch.Generator().manual_seed(0))
    cut, den_cut = generate(StopAt(5), kernel(), cfg, 3, torch.Generator().manual_seed(0), stop_id=SEP)
    assert (full[:, 5] == SEP).all()
    assert cut.shape == (3, 8) and den_cut.calls == den_full.calls // 2  # blocks 3 and 4 never run
    assert trim_at_stop(cut, SEP) == trim_at_stop(full, SEP)  # skipping changes nothing that is kept
    for ids, stopped in trim_at_stop(cut, SEP):
        assert stopped and ids[-1] == SEP and len(ids) <= 6 and SEP not in ids[:-1]
    # one row without an EOS: every block runs, that row keeps its full length
    some, den_some = generate(StopAt(5, rows=[0, 1]), kernel(), cfg, 3, torch.Generator().manual_seed(0),
                              stop_id=SEP)
    assert some.shape == (3, 16) and den_some.calls == den_full.calls
    assert trim_at_stop(some, SEP)[2] == (some[2].tolist(), False)


def test_trim_at_stop_searches_after_the_prompt():
    x = torch.tensor([[SEP, 1, 2, SEP, 3], [1, 2, 3, 4, 6]])
    assert trim_at_stop(x, SEP, torch.tensor([1, 0])) == [([SEP, 1, 2, SEP], True), ([1, 2, 3, 4, 6], False)]
    assert trim_at_stop(x, SEP) == [([SEP], True), ([1, 2, 3, 4, 6], False)]


def test_draw_samples_records_length_and_stop_flag():
    template = prompt_template([[1, 2]], 16, ("hi",))
    cfg = SamplerConfig(method="mdlm", steps=8, seq_len=16, strides=2)
    records = draw_samples(StopAt(6), mask_kernel(), cfg, 3, 3, 0, progress=False, template=template, stop_id=SEP)
    for rec in records:
        assert rec["stopped_at_eos"] and rec["length"] == len(rec["ids"]) <= 7 and rec["ids"][:2] == [1, 2]
        assert rec["prompt"] == "hi" and rec["ids"][-1] == SEP

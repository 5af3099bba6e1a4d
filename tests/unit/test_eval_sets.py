"""Eval sets: MDLM's detokenisers on hand-written examples, --eval-set parsing and validation, and
on-the-fly tokenisation packing exactly like preprocess."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.common.artifacts import ConfigError
from pipeline.evaluation.detokenizers import (
    detokenizer_for,
    lambada_detokenizer,
    lm1b_detokenizer,
    ptb_detokenizer,
    wikitext_detokenizer,
)
from pipeline.evaluation.eval_sets import parse_eval_set, parse_eval_sets, tokenize_documents


@pytest.mark.parametrize("raw,clean", [
    ("He said , \" it 's fine . \" Then he left .", "He said, \"it's fine.\" Then he left."),
    ("See http : / / example.com / path ( now ) !", "See http://example.com/path (now)!"),
    ("Is it $ 5 or £ 3 ?", "Is it $5 or £3?"),
    ("one ; two : three", "one; two: three"),
])
def test_lm1b_detokenizer(raw, clean):
    assert lm1b_detokenizer(raw) == clean


@pytest.mark.parametrize("raw,clean", [
    ("the company 's shares do n't rise", "the company's shares don't rise"),
    ("the N N results cost $ N <unk> a\\/b", "the 1 1 results cost $1 ? a/b"),
    ("investors ' money", "investors' money"),
])
def test_ptb_detokenizer(raw, clean):
    assert ptb_detokenizer(raw) == clean


@pytest.mark.parametrize("raw,clean", [
    (" = = Early life = = \n", " == Early life ==\n"),
    ("In 1 @,@ 000 years , the 2 @.@ 5 @-@ mile road ( A1 ) was built . ",
     "In 1,000 years, the 2.5-mile road (A1) was built. "),
    ("the players ' \" big \" deal : yes ; no", "the players' \"big\" deal: yes; no"),
    ("the union 's deal", "the union's deal"),
])
def test_wikitext_detokenizer(raw, clean):
    assert wikitext_detokenizer(raw) == clean


def test_lambada_detokenizer():
    assert lambada_detokenizer("  \u201cHi,\u201d she said.  ") == '\n"Hi," she said.'


def test_detokenizer_chosen_by_name_or_option():
    assert [detokenizer_for(n) for n in ("lm1b", "PTB", "wikitext103", "lambada_openai", "owt")] == \
        ["lm1b", "ptb", "wikitext", "lambada", "none"]
    assert detokenizer_for("wikitext2", "none") == "none"
    spec = parse_eval_set("wikitext2=hf:wikitext:wikitext-2-raw-v1@test")
    assert (spec.name, spec.kind, spec.detokenizer) == ("wikitext2", "hf", "wikitext")
    spec = parse_eval_set("mine=data/x.jsonl.gz#detok=ptb#field=body")
    assert (spec.kind, spec.detokenizer, spec.text_field) == ("raw", "ptb", "body")
    assert parse_eval_set("lm1b=data/pre/test").detokenizer == "none"  # a split is already tokenised


@pytest.mark.parametrize("arg,match", [
    ("noequals", "NAME=SOURCE"), ("=x.txt", "NAME=SOURCE"), ("a b=x.txt", "name"),
    ("a=x.txt#detok=moses", "unknown detokenizer"), ("a=x.txt#lang=en", "unknown option"),
    ("a=data/pre/test#detok=lm1b", "already tokenised"),
])
def test_bad_eval_set_args(arg, match):
    with pytest.raises(ConfigError, match=match):
        parse_eval_set(arg)


def test_duplicate_eval_set_names():
    with pytest.raises(ConfigError, match="unique"):
        parse_eval_sets(["a=x.txt", "a=y.txt"])


def test_evaluate_config_validates_eval_sets():
    from pipeline.evaluation.stage import EvaluateConfig

    cfg = EvaluateConfig(eval_sets=("ptb=p.txt",))
    assert cfg.max_test_sequences is None  # the whole split by default
    assert cfg.artifact_config()["eval_sets"][0]["detokenizer"] == "ptb"
    with pytest.raises(ConfigError, match="max-test-sequences"):
        EvaluateConfig(max_test_sequences=0)


def test_tokenize_documents_packs_like_preprocess(tokenizer):
    from pipeline.common.hf_assets import load_tokenizer_spec
    from pipeline.common.packing import PadTruncatePacker, WrapPacker

    docs = ["the cat sat on the mat .", "a much longer sentence that will certainly be truncated here", "hi"]
    backend = load_tokenizer_spec().backend
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    out = tokenize_documents(iter(docs), backend, PadTruncatePacker(8, cls, sep, pad, np.int64), str)
    assert out.shape == (3, 8)
    for row, doc in zip(out.tolist(), docs):
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"][:6]
        assert row[:len(ids) + 2] == [cls, *ids, sep] and set(row[len(ids) + 2:]) <= {pad}
    wrapped = tokenize_documents(iter(docs), backend, WrapPacker(8, pad, np.int64, None, sep), str)
    stream = [i for d in docs for i in tokenizer(d, add_special_tokens=False)["input_ids"] + [sep]]
    assert [i for i in wrapped.flatten().tolist()][:len(stream)] == stream
    assert len(tokenize_documents(iter(docs), backend, WrapPacker(8, pad, np.int64, None, sep), str, 1)) == 1

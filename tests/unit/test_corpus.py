"""The one corpus reader (pipeline/common/corpus.py) of preprocess and the eval sets: files of any name
(WikiText's wiki.test.raw, no extension), jsonl fields, hf: sources and their default split (the role
they are read for), the offline error, and both callers reading a file into the same documents."""
from __future__ import annotations

import gzip
import json
import sys
import types

import numpy as np
import pytest

from pipeline.common.corpus import (
    CorpusSourceError,
    HFSource,
    decode,
    iter_texts,
    make_packer,
    parse_hf_source,
    source_format,
)
from pipeline.common.packing import PadTruncatePacker, WrapPacker
from pipeline.evaluation.eval_sets import EvalSetSourceError, freshness_inputs, load_eval_set, parse_eval_set

WIKI = " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 @-@ is a game . \n"


@pytest.fixture
def fake_datasets(monkeypatch):
    """A stand-in ``datasets`` module: records its load_dataset calls, serves ``records``."""
    module = types.SimpleNamespace(calls=[], records=[{"text": "one"}, {"text": "  "}, {"other": 1}])

    def load_dataset(name, config, split, streaming):
        module.calls.append((name, config, split, streaming))
        return iter(module.records)

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return module


def _manifest_dir(tmp_path, mode="lm1b", wrap=False, seq_len=16, text_field="text"):
    """A preprocessed artifact's manifest, as much of it as an eval set's packing reads."""
    from pipeline.common.artifacts import MANIFEST_NAME
    from pipeline.common.hf_assets import load_tokenizer_spec

    ids = load_tokenizer_spec().special_ids
    pre = tmp_path / "pre"
    pre.mkdir()
    special = {"cls": ids["cls"], "sep": ids["sep"], "separator": ids["sep"], "pad": ids["pad"]}
    (pre / MANIFEST_NAME).write_text(json.dumps({
        "config": {"mode": mode, "seq_len": seq_len, "wrap": wrap, "text_field": text_field, "tokenizer": "default"},
        "special_ids": special}))
    return {"artifacts": {"preprocessed": str(pre)}}, special


@pytest.mark.parametrize("source,role,expected", [
    ("hf:wikitext:wikitext-2-raw-v1@test", "train", HFSource("wikitext", "wikitext-2-raw-v1", "test")),
    ("hf:wikitext:wikitext-2-raw-v1", "test", HFSource("wikitext", "wikitext-2-raw-v1", "test")),
    ("hf:org/data", "train", HFSource("org/data", None, "train")),
    ("hf:org/data", "validation", HFSource("org/data", None, "validation")),
    ("hf:org/data@train[:10%]", "test", HFSource("org/data", None, "train[:10%]")),
])
def test_hf_source_parsing_and_default_split_is_the_role(source, role, expected):
    assert parse_hf_source(source, role) == expected
    assert source_format(source) == "hf"


@pytest.mark.parametrize("bad", ["hf:", "hf:name@", "hf::cfg"])
def test_malformed_hf_source_is_one_error(bad):
    with pytest.raises(CorpusSourceError, match="hf:ID"):
        parse_hf_source(bad, "test")


def test_any_file_name_is_text_one_document_per_line(tmp_path):
    raw, bare, gz = tmp_path / "wiki.test.raw", tmp_path / "ptb_test", tmp_path / "wiki.valid.raw.gz"
    raw.write_text(WIKI, encoding="utf-8")
    bare.write_bytes(b"\xef\xbb\xbffirst line\r\nbad \xff byte\n\n")
    gz.write_bytes(gzip.compress(WIKI.encode()))
    expected = [" = Valkyria Chronicles III = ", " Senjō no Valkyria 3 @-@ is a game . "]
    assert [source_format(str(p)) for p in (raw, bare, gz)] == ["text"] * 3
    assert list(iter_texts(str(raw), "text", "test")) == expected
    assert list(iter_texts(str(gz), "text", "test")) == expected
    assert list(iter_texts(str(bare), "text", "test")) == ["first line", "bad \ufffd byte"]


def test_jsonl_field_and_skip_reasons(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    lines = [{"body": "kept"}, {"text": "wrong field"}, "{not json", "", {"body": "  "}, {"body": "lone \ud800"}]
    path.write_bytes(gzip.compress("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines).encode()))
    assert source_format(str(path)) == "jsonl"
    assert list(iter_texts(str(path), "body", "train")) == ["kept", "lone ?"]
    assert decode(b"{not json\n", "jsonl", "body")[1] == "bad_json"
    assert decode(b'{"text": "t"}\n', "jsonl", "body")[1] == "missing_field"
    assert decode(b'{"body": "lone \\ud800"}', "jsonl", "body") == ("lone ?", None, 1)
    assert decode(b"caf\xe9\n", "text", "text") == ("caf\ufffd", None, 1)


def test_corrupt_gzip_is_one_error(tmp_path):
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(gzip.compress(b"line\n" * 10000)[:100])
    with pytest.raises(CorpusSourceError, match="cannot read"):
        list(iter_texts(str(path), "text", "test"))


def test_hf_source_reads_the_role_split_and_skips_like_files(fake_datasets):
    assert list(iter_texts("hf:org/data:cfg", "text", "test")) == ["one"]
    assert fake_datasets.calls == [("org/data", "cfg", "test", True)]
    fake_datasets.records = [{"sentence": "ptb names its field sentence"}]
    assert list(iter_texts("hf:ptb_text_only@validation", "text", "test")) == ["ptb names its field sentence"]
    assert fake_datasets.calls[-1][2] == "validation"


def test_preprocess_reads_hf_inputs_with_their_role_split(fake_datasets):
    from collections import defaultdict

    from preprocess.readers import ReadStats, SplitRouter, iter_documents

    stats = defaultdict(ReadStats)
    for role in ("train", "validation", "test"):
        docs = list(iter_documents(["hf:org/data"], SplitRouter(role, 0, 0, 0), stats, "text", role=role))
        assert docs == [[(role, "one")]]
    assert [call[2] for call in fake_datasets.calls] == ["train", "validation", "test"]
    assert stats["test"].skipped == {"empty": 1, "missing_field": 1}


def test_offline_hf_source_is_one_error_line(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CorpusSourceError) as exc:
        list(iter_texts("hf:some/dataset", "text", "test"))
    message = str(exc.value)
    assert "\n" not in message and "'hf:some/dataset' split 'test' (HF_HUB_OFFLINE is set)" in message


def test_missing_datasets_package_is_one_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(CorpusSourceError, match=r"needs the 'datasets' package \(pip install"):
        list(iter_texts("hf:some/dataset", "text", "test"))


def test_make_packer_per_mode():
    special = {"cls": 1, "sep": 2, "separator": 3, "pad": 0}
    pad = make_packer("lm1b", False, 8, special, np.int64)
    wrap = make_packer("lm1b", True, 8, special, np.int64)
    owt = make_packer("owt", False, 8, special, np.uint16)
    assert isinstance(pad, PadTruncatePacker) and (pad.cls_id, pad.sep_id, pad.pad_id) == (1, 2, 0)
    assert isinstance(wrap, WrapPacker) and (wrap.prefix_id, wrap.suffix_id) == (1, 2)
    assert isinstance(owt, WrapPacker) and (owt.prefix_id, owt.suffix_id, owt.dtype) == (None, 3, np.uint16)
    with pytest.raises(ValueError, match="mode"):
        make_packer("bert", False, 8, special, np.int64)


def test_wiki_test_raw_is_an_eval_set(tmp_path, tokenizer):
    from pipeline.evaluation.detokenizers import wikitext_detokenizer

    raw = tmp_path / "wiki.test.raw"
    raw.write_text(WIKI, encoding="utf-8")
    spec = parse_eval_set(f"wikitext103={raw}")
    assert (spec.kind, spec.detokenizer) == ("raw", "wikitext")
    assert freshness_inputs(spec) == ([raw], {})
    export_config, sp = _manifest_dir(tmp_path)
    seqs = load_eval_set(spec, export_config, {})
    docs = [wikitext_detokenizer(t) for t in iter_texts(str(raw), "text", "test")]
    assert seqs.shape == (2, 16)
    for row, doc in zip(seqs.tolist(), docs):
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"][:14]
        assert row[:len(ids) + 2] == [sp["cls"], *ids, sp["sep"]] and set(row[len(ids) + 2:]) <= {sp["pad"]}


def test_eval_set_kinds_by_what_the_path_is(tmp_path):
    bare = tmp_path / "ptb_test"
    bare.write_text("a line\n")
    assert parse_eval_set(f"ptb={bare}").kind == "raw"            # an existing file, no extension
    assert parse_eval_set(f"x={tmp_path}").kind == "split"        # a directory
    assert parse_eval_set("x=missing/wiki.test.raw").kind == "raw"  # missing: judged by its name
    assert parse_eval_set("x=missing/test").kind == "split"
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        freshness_inputs(parse_eval_set("x=missing/test"))


def test_hf_eval_set_error_names_the_set(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    export_config, _ = _manifest_dir(tmp_path)
    with pytest.raises(EvalSetSourceError, match=r"^--eval-set wt2: 'hf:wikitext' needs the 'datasets'"):
        load_eval_set(parse_eval_set("wt2=hf:wikitext"), export_config, {})


def test_preprocess_and_eval_sets_read_the_same_documents(tmp_path, corpora):
    """The same file is the same documents for both callers (so the same token ids once packed)."""
    from collections import defaultdict

    from preprocess.readers import ReadStats, SplitRouter, iter_documents

    path = tmp_path / "mixed.raw"
    lines = (corpora / "lm1b_sample" / "test.txt").read_bytes().splitlines(keepends=True)[:300]
    path.write_bytes(b"".join(lines) + b"\n  \nbad \xff\xfe\n")
    chunks = iter_documents([str(path)], SplitRouter("test", 0, 0, 0), defaultdict(ReadStats), "text", role="test")
    assert [text for chunk in chunks for _, text in chunk] == list(iter_texts(str(path), "text", "test"))

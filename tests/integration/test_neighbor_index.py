"""The neighbor_index CLI on a real preprocess artifact: the artifact it writes, rerun / --force,
vocabulary refusal, bad options (its parts are tested in tests/unit/test_neighbor_search.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from neighbor_index.__main__ import main
from neighbor_index.embed import normalize_rows
from neighbor_index.vocab import vocabulary_from_tokenizer
from pipeline.common.artifacts import load_manifest
from pipeline.common.hf_assets import default_model_dir
from pipeline.common.neighbor_artifact import read_neighbor_arrays

from cli_utils import run_main


def _run(*args) -> int:
    return run_main(main, *args)


# --------------------------------------------------------------------------- the stage end to end
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory, lm1b_lines) -> Path:
    """A real preprocess artifact (the preprocess CLI on 300 LM1B sentences)."""
    from preprocess.__main__ import main as preprocess_main

    root = tmp_path_factory.mktemp("pre")
    (root / "train.txt").write_text("\n".join(lm1b_lines[:300]) + "\n", encoding="utf-8")
    assert preprocess_main(["--input", str(root / "train.txt"), "--out", str(root / "art"), "--mode", "lm1b",
                            "--seq-len", "32", "--no-progress"]) == 0
    return root / "art"


def _fake_model(directory: Path, rows: int, dim: int = 16, with_tokenizer: bool = True, seed: int = 0) -> np.ndarray:
    """A checkpoint dir like a semdlm export: safetensors with an `embed.weight` (+ a distractor)."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True)
    matrix = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    save_file({"backbone.embed.weight": matrix,
               "backbone.time_embed.mlp.0.weight": np.zeros((dim, 8), np.float32)},
              str(directory / "model.safetensors"))
    if with_tokenizer:
        for name in _TOKENIZER_FILES:
            shutil.copy(default_model_dir() / name, directory / name)
    return matrix


def test_stage_end_to_end_from_model_embeddings(tmp_path, preprocessed, capsys):
    matrix = _fake_model(tmp_path / "model", 30522)
    out, k = tmp_path / "nb", 8
    args = ["--preprocessed", preprocessed, "--out", out, "--embeddings-from-model", tmp_path / "model",
            "--k-max", k, "--assoc-k", 4, "--min-count", 2, "--tau", 0.7]
    assert _run(*args) == 0
    tables, manifest = read_neighbor_arrays(out)
    assert manifest == load_manifest(out, stage="neighbor_index")
    V = 30522
    assert tables["neighbors"].shape == (V, k) and tables["neighbors"].dtype == np.int32
    assert tables["similarities"].dtype == np.float32 and tables["unigram_prior"].dtype == np.float64
    valid = tables["valid_vocab"]
    vocab = vocabulary_from_tokenizer(None)
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    assert not valid[[ids[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "[unused7]", "##s", ".")]].any()
    assert valid[tables["neighbors"]].all() and not (tables["neighbors"] == np.arange(V)[:, None]).any()
    # exact neighbours of a sample of rows (specials included) against numpy on the same matrix
    emb = normalize_rows(matrix)
    rows = np.r_[0, 101, 102, 103, ids["king"], ids["##s"], np.random.default_rng(0).choice(V, 40, replace=False)]
    sims = emb[rows] @ emb.T
    sims[:, ~valid] = -np.inf
    sims[np.arange(len(rows)), rows] = -np.inf
    np.testing.assert_array_equal(tables["neighbors"][rows], np.argsort(-sims, axis=1, kind="stable")[:, :k])
    # Eq 119 prior: sums to 1, zero outside the valid vocabulary and below --min-count
    counts = np.load(preprocessed / "unigram_counts.npy")
    prior = tables["unigram_prior"]
    assert prior.sum() == pytest.approx(1.0, abs=1e-12) and (prior[~valid] == 0).all()
    np.testing.assert_array_equal(prior > 0, valid & (counts >= 2))
    assert tables["semantic_assoc_indices"].shape == (V, 5)
    assert manifest["stats"]["vocab_check"] == "identity" and manifest["upstream"]["preprocessed"]
    assert "## Sample neighbours" in (out / "report.md").read_text()
    from pipeline.common.neighbor_artifact import (
        load_neighbor_tables as kernel_reader,  # the consumers' reader accepts it
    )

    assert kernel_reader(out).neighbors.shape == (V, k)

    # rerun: a no-op that leaves the artifact untouched; --force rebuilds
    stat = (out / "manifest.json").stat()
    before = stat.st_mtime_ns, stat.st_ino, (out / "manifest.json").read_text()
    capsys.readouterr()
    assert _run(*args) == 0
    assert "up to date" in capsys.readouterr().out
    stat = (out / "manifest.json").stat()
    assert (stat.st_mtime_ns, stat.st_ino, (out / "manifest.json").read_text()) == before
    assert _run(*args, "--force") == 0  # a new directory is swapped in
    assert (out / "manifest.json").stat().st_ino != before[1]
    np.testing.assert_array_equal(read_neighbor_arrays(out)[0]["neighbors"], tables["neighbors"])


def _tiny_tokenizer_dir(directory: Path) -> Path:
    """A real, different WordPiece tokenizer (60 tokens) saved like an HF model dir — no weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(55)])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(directory)
    return directory


def test_vocabulary_mismatch_is_refused_before_embedding(tmp_path, preprocessed, capsys):
    # The embedder dir holds a different tokenizer and no weights at all: the stage must stop on the
    # vocabulary check, before it would try (and fail) to load a model.
    tiny = _tiny_tokenizer_dir(tmp_path / "tiny")
    assert _run("--preprocessed", preprocessed, "--out", tmp_path / "a", "--embedder", tiny) == 2
    err = capsys.readouterr().err
    assert "vocabulary mismatch" in err and "vocab-sha256:" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()
    # a checkpoint with its own (different) tokenizer is refused the same way
    _fake_model(tmp_path / "ckpt", 30522, with_tokenizer=False)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / name, tmp_path / "ckpt" / name)
    assert _run("--preprocessed", preprocessed, "--out", tmp_path / "b",
                "--embeddings-from-model", tmp_path / "ckpt") == 2
    assert "vocabulary mismatch" in capsys.readouterr().err
    # no tokenizer to compare: the matrix must at least have one row per vocabulary entry
    _fake_model(tmp_path / "small", 1000, with_tokenizer=False)
    assert _run("--preprocessed", preprocessed, "--out", tmp_path / "c",
                "--embeddings-from-model", tmp_path / "small") == 2
    assert "no input-embedding matrix with 30522 rows" in capsys.readouterr().err
    assert _run("--preprocessed", tmp_path / "missing", "--out", tmp_path / "d") == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [(["--tau", "0"], "--tau must be in (0, 1]"),
                                          (["--k-max", "0"], "--k-max must be a positive integer"),
                                          (["--assoc-k", "99"], "--assoc-k must be in [0, --k-max=64]"),
                                          (["--embedding-key", "x"], "--embedding-key only applies")])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, bad, message):
    assert _run("--preprocessed", tmp_path, "--out", tmp_path / "o", *bad) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1

"""The neighbor_index stage: exact neighbours vs numpy, token classes, Eq 119 prior, S+, CLI runs on
a real preprocess artifact, vocabulary refusal, and the real offline MiniLM on `king`."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from neighbor_index import load_neighbor_tables
from neighbor_index.__main__ import main
from neighbor_index.embed import embed_texts, normalize_rows
from neighbor_index.prior import prior_support, unigram_prior
from neighbor_index.search import brute_force_neighbors, search_neighbors, semantic_association
from neighbor_index.vocab import classify_tokens, surface_form, vocabulary_from_tokenizer
from pipeline.common.artifacts import load_manifest
from pipeline.common.hf_assets import default_model_dir

V_SMALL, D_SMALL = 600, 24


def _run(*args) -> int:
    try:
        return main([str(a) for a in args] + ["--no-progress"])
    except SystemExit as exc:  # argparse / stage_errors exit
        return int(exc.code)


def _random_vocab(seed: int = 0, n_invalid: int = 60):
    rng = np.random.default_rng(seed)
    emb = normalize_rows(rng.standard_normal((V_SMALL, D_SMALL)))
    valid = np.ones(V_SMALL, dtype=bool)
    valid[:5] = False  # "specials"
    valid[rng.choice(np.arange(5, V_SMALL), size=n_invalid, replace=False)] = False
    return emb, valid


# --------------------------------------------------------------------------- search
def test_flat_neighbors_equal_brute_force_numpy():
    emb, valid = _random_vocab()
    k = 12
    tables = search_neighbors(emb, valid, k, "flat", threads=1)
    ref_ids, ref_sims = brute_force_neighbors(emb, valid, k)
    np.testing.assert_array_equal(tables.neighbors, ref_ids)
    np.testing.assert_allclose(tables.similarities, ref_sims, atol=1e-5)
    assert tables.neighbors.dtype == np.int32 and tables.similarities.dtype == np.float32
    assert (np.diff(tables.similarities, axis=1) <= 1e-6).all()  # most similar first
    rows = np.arange(V_SMALL)[:, None]
    assert not (tables.neighbors == rows).any(), "a token is its own neighbour"
    assert valid[tables.neighbors].all(), "an invalid token (special) appears as a neighbour"


def test_duplicate_vectors_do_not_leak_self():
    emb, valid = _random_vocab(seed=1)
    emb[8] = emb[7]  # like `king` / `##king` read by surface form: identical vectors
    valid[7:9] = True
    tables = search_neighbors(emb, valid, 5, "flat")
    assert tables.neighbors[7, 0] == 8 and tables.neighbors[8, 0] == 7
    assert not (tables.neighbors == np.arange(V_SMALL)[:, None]).any()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_are_full_and_report_recall(kind):
    emb, valid = _random_vocab(seed=2)
    k = 10
    tables = search_neighbors(emb, valid, k, kind, recall_sample=200, ivf_nlist=16, ivf_nprobe=4)
    ref_ids, _ = brute_force_neighbors(emb, valid, k)
    hits = np.mean([len(set(a) & set(b)) / k for a, b in zip(tables.neighbors, ref_ids)])
    assert tables.recall_rows == 200 and 0.5 < tables.recall <= 1.0
    assert abs(tables.recall - hits) < 0.1  # the sampled recall estimates the full-table recall
    assert valid[tables.neighbors].all() and not (tables.neighbors == np.arange(V_SMALL)[:, None]).any()


def test_too_few_valid_tokens_is_an_error():
    emb, _ = _random_vocab()
    valid = np.zeros(V_SMALL, dtype=bool)
    valid[:4] = True
    with pytest.raises(ValueError, match="only 4 valid tokens"):
        search_neighbors(emb, valid, 4)


# --------------------------------------------------------------------------- vocabulary, prior, S+
def test_token_classes_of_the_bert_vocabulary():
    vocab = vocabulary_from_tokenizer(None)
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    classes = classify_tokens(vocab.tokens, vocab.special_ids.values())
    for tok in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "[unused0]", "[unused993]"):
        assert classes.special[ids[tok]] and not classes.valid[ids[tok]], tok
    assert classes.continuation[ids["##ing"]] and not classes.valid[ids["##ing"]]
    for tok in (".", ",", "!", "$", "©"):
        assert classes.punctuation[ids[tok]] and not classes.valid[ids[tok]], tok
    assert classes.continuation[ids["##."]] and not classes.punctuation[ids["##."]]  # one class per token
    for tok in ("king", "3", "1990", "paris"):
        assert classes.valid[ids[tok]], tok
    assert classes.special.sum() == 5 + sum(t.startswith("[unused") for t in vocab.tokens)
    assert surface_form("##ing") == "ing" and surface_form("##") == "##"


def test_unigram_prior_eq119():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=200)
    valid = rng.random(200) > 0.3
    support = prior_support(valid, counts, min_count=5)
    tau = 0.5
    prior = unigram_prior(counts, support, tau)
    assert prior.dtype == np.float64 and prior.sum() == pytest.approx(1.0, abs=1e-12)
    assert (prior[~support] == 0).all() and (prior[support] > 0).all()
    assert not support[~valid].any() and not support[counts < 5].any()
    i, j = np.flatnonzero(support)[:2]
    assert prior[i] / prior[j] == pytest.approx((counts[i] / counts[j]) ** tau)
    with pytest.raises(ValueError, match="empty support"):
        unigram_prior(counts, np.zeros(200, dtype=bool), 1.0)
    with pytest.raises(ValueError, match="tau"):
        unigram_prior(counts, support, 1.5)


def test_semantic_association_matches_dense_eq114():
    emb, valid = _random_vocab(seed=3)
    tables = search_neighbors(emb, valid, 8)
    special = ~valid & (np.arange(V_SMALL) < 5)
    idx, w = semantic_association(tables.neighbors, tables.similarities, 4, min_sim=0.1, self_only_rows=special)
    dense = np.zeros((V_SMALL, V_SMALL))
    dense[np.arange(V_SMALL), np.arange(V_SMALL)] = 1.0
    for r in np.flatnonzero(~special):
        for c, s in zip(tables.neighbors[r, :4], tables.similarities[r, :4]):
            dense[r, c] = max(s, 0.0) if s >= 0.1 else 0.0
    counts = np.random.default_rng(4).integers(0, 3, size=(2, V_SMALL)).astype(np.float64)
    np.testing.assert_allclose((w * counts[:, idx]).sum(-1), counts @ dense.T, rtol=1e-6)
    assert idx.shape == (V_SMALL, 5) and (idx[:, 0] == np.arange(V_SMALL)).all() and (w[:, 0] == 1).all()


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
               "backbone.time_embed.mlp.0.weight": np.zeros((dim, 8), np.float32)}, str(directory / "model.safetensors"))
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
    tables = load_neighbor_tables(out)
    manifest = load_manifest(out, stage="neighbor_index")
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
    from pipeline.common.neighbor_artifact import load_neighbor_tables as kernel_reader  # the consumers' reader accepts it

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
    np.testing.assert_array_equal(load_neighbor_tables(out)["neighbors"], tables["neighbors"])


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
    assert _run("--preprocessed", preprocessed, "--out", tmp_path / "b", "--embeddings-from-model", tmp_path / "ckpt") == 2
    assert "vocabulary mismatch" in capsys.readouterr().err
    # no tokenizer to compare: the matrix must at least have one row per vocabulary entry
    _fake_model(tmp_path / "small", 1000, with_tokenizer=False)
    assert _run("--preprocessed", preprocessed, "--out", tmp_path / "c", "--embeddings-from-model", tmp_path / "small") == 2
    assert "no input-embedding matrix with 30522 rows" in capsys.readouterr().err
    assert _run("--preprocessed", tmp_path / "missing", "--out", tmp_path / "d") == 2
    assert "does not exist" in capsys.readouterr().err


def test_real_minilm_king_neighbours():
    """The offline all-MiniLM-L6-v2 over (a sample of) the vocabulary: `king` lands next to `queen`/`kings`.

    A 3,000-token sample keeps the test fast; the full-vocabulary pass is in bench/neighbors.py.
    """
    vocab = vocabulary_from_tokenizer(None)
    classes = classify_tokens(vocab.tokens, vocab.special_ids.values())
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    pool = np.flatnonzero(classes.valid)
    sample = np.unique(np.r_[np.random.default_rng(0).choice(pool, 3000, replace=False),
                             [ids[t] for t in ("king", "queen", "kings", "banana", "[MASK]")]])
    emb = embed_texts([surface_form(vocab.tokens[i]) for i in sample], progress=False)
    tables = search_neighbors(emb, classes.valid[sample], 10)
    row = int(np.flatnonzero(sample == ids["king"])[0])
    king_neighbors = [vocab.tokens[sample[j]] for j in tables.neighbors[row]]
    assert {"queen", "kings"} & set(king_neighbors), king_neighbors
    assert "king" not in king_neighbors and "[MASK]" not in king_neighbors


@pytest.mark.parametrize("bad, message", [(["--tau", "0"], "--tau must be in (0, 1]"),
                                          (["--k-max", "0"], "--k-max must be a positive integer"),
                                          (["--assoc-k", "99"], "--assoc-k must be in [0, --k-max=64]"),
                                          (["--embedding-key", "x"], "--embedding-key only applies")])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, bad, message):
    assert _run("--preprocessed", tmp_path, "--out", tmp_path / "o", *bad) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1

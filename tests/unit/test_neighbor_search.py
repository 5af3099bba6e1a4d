"""The neighbor_index stage's parts: exact neighbours vs numpy, approximate indexes, token classes, the
Eq 119 prior, S+ (Eq 114), and the real offline MiniLM on `king` (the CLI runs are in tests/integration)."""
from __future__ import annotations

import numpy as np
import pytest

from neighbor_index.embed import embed_texts, normalize_rows
from neighbor_index.prior import prior_support, unigram_prior
from neighbor_index.search import brute_force_neighbors, search_neighbors
from neighbor_index.vocab import classify_tokens, surface_form, vocabulary_from_tokenizer
from pipeline.common.neighbor_artifact import semantic_association_rows

V_SMALL, D_SMALL = 600, 24


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
    idx, w = semantic_association_rows(tables.neighbors, tables.similarities, 4, min_sim=0.1,
                                       self_only_rows=special)
    dense = np.zeros((V_SMALL, V_SMALL))
    dense[np.arange(V_SMALL), np.arange(V_SMALL)] = 1.0
    for r in np.flatnonzero(~special):
        for c, s in zip(tables.neighbors[r, :4], tables.similarities[r, :4]):
            dense[r, c] = max(s, 0.0) if s >= 0.1 else 0.0
    counts = np.random.default_rng(4).integers(0, 3, size=(2, V_SMALL)).astype(np.float64)
    np.testing.assert_allclose((w * counts[:, idx]).sum(-1), counts @ dense.T, rtol=1e-6)
    assert idx.shape == (V_SMALL, 5) and (idx[:, 0] == np.arange(V_SMALL)).all() and (w[:, 0] == 1).all()


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

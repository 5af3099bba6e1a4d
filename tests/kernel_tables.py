"""Small random neighbour tables for kernel and likelihood tests (test helper)."""
from __future__ import annotations

import torch


def random_tables(vocab: int, k: int, mask: int, seed: int = 0) -> dict:
    """A full neighbour table without self, sorted similarities, valid vocab without [MASK], a unigram prior."""
    g = torch.Generator().manual_seed(seed)
    nb = torch.stack([torch.randperm(vocab - 1, generator=g)[:k] for _ in range(vocab)])
    nb = nb + (nb >= torch.arange(vocab)[:, None]).long()  # skip the row token itself
    sims = torch.sort(torch.rand(vocab, k, generator=g), descending=True, dim=1).values
    valid = torch.ones(vocab, dtype=torch.bool)
    valid[mask] = False
    prior = torch.rand(vocab, generator=g, dtype=torch.float64) * valid
    return dict(neighbors=nb, similarities=sims, valid_vocab=valid, unigram_prior=prior / prior.sum())

"""The O(V^2) dense reference of the continuous-time ELBO and the model's reverse rates (small V only).

What the tests check the sparse code of pipeline/core/ct_elbo.py against, and what integrates a small
model's master equation exactly (tests/unit/test_ct_elbo.py). Every quantity is built from the dense
rows q_t(j | v) and d/dt q_t(j | v) of the kernel; derivation: docs/likelihood.md, Sec 6.
"""
from __future__ import annotations

import torch

from pipeline.core.kernels import Kernel
from pipeline.core.posterior import PLAIN, Reading, log_posterior


def dense_rows(kernel: Kernel, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_t(j | v), d/dt q_t(j | v)) as dense [v, j] matrices (small V)."""
    allv = torch.arange(kernel.vocab_size, device=kernel.device)
    return kernel.marginal_rows(allv, t), kernel.marginal_derivative_rows(allv, t)


def _dense_rates(kernel: Kernel, logits: torch.Tensor, z: torch.Tensor, t: float, rows=None, reading: Reading = PLAIN):
    """Reference pieces: the posterior w [N, v] (:func:`pipeline.core.posterior.log_posterior`), a_v(z) [N, v],
    and [-pdot_v(y)]_+ [v, y]."""
    P, D = dense_rows(kernel, t) if rows is None else rows
    S = D.clamp_min(0.0).sum(-1)  # [v]
    Pz, Dz = P[:, z].T, D[:, z].T  # [N, v]
    w = log_posterior(reading, kernel, logits, z, t, lik=Pz).exp()
    a = torch.where(Pz > 0, Dz.clamp_min(0.0) / (Pz.clamp_min(1e-300) * S.clamp_min(1e-300)), torch.zeros_like(Pz))
    return w, a, (-D).clamp_min(0.0)


def reverse_rates_dense(kernel: Kernel, logits: torch.Tensor, z: torch.Tensor, t: float, rows=None,
                        reading: Reading = PLAIN) -> torch.Tensor:
    """The model's generative rates Rhat(z -> y) = sum_v w_v Rbar^v(z -> y), [N, V] (diagonal zeroed).

    O(V^2) per position: a reference for tests and for integrating a small model's master equation.
    ``rows``: :func:`dense_rows` at t, when already computed.
    """
    w, a, neg = _dense_rates(kernel, logits, z, t, rows, reading)
    r_hat = (w * a) @ neg
    r_hat[torch.arange(z.numel(), device=z.device), z] = 0.0
    return r_hat


def ctelbo_integrand_dense(kernel: Kernel, logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor,
                           t: float, reading: Reading = PLAIN) -> torch.Tensor:
    """Reference O(V^2) per position implementation of the integrand, [N] (flat inputs, one scalar t)."""
    z, x = xt.reshape(-1), x0.reshape(-1)
    w, a, neg = _dense_rates(kernel, logits, z, t, reading=reading)
    rows = torch.arange(z.numel(), device=z.device)
    r_hat = (w * a) @ neg  # [N, y]
    r_bar = a[rows, x].unsqueeze(-1) * neg[x]  # [N, y]
    off = torch.ones_like(r_hat, dtype=torch.bool)
    off[rows, z] = False
    kl = torch.where(r_bar > 0, r_bar * (r_bar.clamp_min(1e-300).log() - r_hat.clamp_min(1e-300).log()), 0.0)
    return ((r_hat - r_bar) * off).sum(-1) + (kl * off).sum(-1)

"""Noise schedules of the transition kernels (paper Sec 2, Appendix C, Appendix E.1 Eq 118).

Every function is elementwise over a tensor ``t`` in [0, 1] and returns a tensor of the same
shape and dtype, so the kernels stay vectorised over [B, L] batches on any device.
"""
from __future__ import annotations

import math

import torch

ALPHA_SCHEDULES = ("loglinear", "cosine", "power")


def alpha_loglinear(t: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Log-linear retention (MDLM): sigma_t = -log(1 - (1 - eps) t), so alpha_t = 1 - (1 - eps) t.

    With ``eps = 0`` this is the alpha_t = 1 - t of Eq 5/6 and of the main-text SemDLM+ preset.
    """
    return 1.0 - (1.0 - eps) * t


def alpha_cosine(t: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Cosine retention alpha_t = eps + (1 - eps) cos(pi t / 2) (MDLM's cosine schedule)."""
    return eps + (1.0 - eps) * torch.cos(0.5 * math.pi * t)


def alpha_power(t: torch.Tensor, alpha_min: float, power: float) -> torch.Tensor:
    """Eq 118 (left): alpha_t = alpha_min + (1 - alpha_min)(1 - t)^beta."""
    return alpha_min + (1.0 - alpha_min) * (1.0 - t).clamp_min(0.0) ** power


def beta_power(t: torch.Tensor, beta_max: float, eta: float) -> torch.Tensor:
    """Eq 118 (middle): global-jump weight beta_t = beta_max t^eta."""
    return beta_max * t.clamp_min(0.0) ** eta


def neighborhood_size(t: torch.Tensor, k_max: float, gamma: float) -> torch.Tensor:
    """Eq 118 (right): k_t = 1 + (k_max - 1) t^gamma (a real number; see fractional_knn_probs)."""
    return 1.0 + (k_max - 1.0) * t.clamp_min(0.0) ** gamma


def fractional_knn_probs(k_t: torch.Tensor, num_ranks: int) -> torch.Tensor:
    """Rank distribution (1/k_t) 1[rank <= k_t] of Eq 103/117 for a real-valued k_t: [..., num_ranks].

    A fractional k_t = f + w (f = floor, 0 <= w < 1) is the mixture (1 - w) U(N_f) + w U(N_{f+1})
    of the two neighbouring integer neighbourhoods. It equals Eq 103 exactly at integer k_t, is
    continuous in t (so q_t has no jumps as k_t grows) and keeps the neighbourhoods nested, which
    the likelihood bound's coupling relies on. Ranks beyond ``num_ranks`` get no mass here; the
    caller decides where that mass goes (SemDLM+ absorbs it into the global branch).
    """
    f = torch.floor(k_t).clamp_min(1.0)
    w = (k_t - f).clamp(0.0, 1.0)
    ranks = torch.arange(1, num_ranks + 1, device=k_t.device, dtype=k_t.dtype)
    f_, w_ = f.unsqueeze(-1), w.unsqueeze(-1)
    return (1.0 - w_) / f_ * (ranks <= f_) + w_ / (f_ + 1.0) * (ranks <= f_ + 1.0)


def inverse_temperature(t: torch.Tensor, tau_min: float, power: float) -> torch.Tensor:
    """1 / tau_t for the softmax kernel of Eq 8 with tau_t = tau_min (1 - t)^(-power).

    tau_t increases monotonically from tau_min at t = 0 to +inf at t = 1 (as Eq 8 asks); the
    inverse is returned so that t = 1 gives an exact 0 (uniform over the table) instead of inf.
    """
    return (1.0 - t).clamp_min(0.0) ** power / tau_min

"""Training losses shared by the diffusion and autoregressive trainers.

* :func:`per_token_cross_entropy` - -log p_theta(x0_i | x_t) at every position, the building block;
* :func:`change_aware_loss` - the paper's change-aware objective, Eq 120 (Appendix E.1);
* :func:`elbo_weighted_loss` - the hook the likelihood bounds plug their continuous-time weights into
  (e.g. MDLM's  -alpha'_t / (1 - alpha_t)  on masked positions), giving a NELBO per token;
* :func:`ar_loss` - next-token cross-entropy of the autoregressive baseline.

Masks: ``pad_mask`` is True at PADDING positions (they are excluded everywhere); ``None`` means no
padding. ``changed`` is the Bool[B, L] mask returned by ``Kernel.sample_xt``.
All losses are in nats; bits = nats / ln 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    """Weights of Eq 120. The paper only asks for lambda_chg >> lambda_same; these defaults are ours."""

    lambda_chg: float = 1.0
    lambda_same: float = 0.1

    def __post_init__(self) -> None:
        if not (self.lambda_chg >= self.lambda_same >= 0.0):
            raise ValueError(
                f"Eq 120 needs lambda_chg >= lambda_same >= 0, got lambda_chg={self.lambda_chg}, "
                f"lambda_same={self.lambda_same}")
        if self.lambda_chg <= 0.0:
            raise ValueError(f"lambda_chg must be > 0 (changed positions carry the signal), got {self.lambda_chg}")


def _real_tokens(reference: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
    if pad_mask is None:
        return torch.ones_like(reference, dtype=torch.bool)
    if pad_mask.shape != reference.shape:
        raise ValueError(f"pad_mask shape {tuple(pad_mask.shape)} != tokens shape {tuple(reference.shape)}")
    return ~pad_mask.bool()


def per_token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target] per position: Float[B, L, V], Long[B, L] -> Float[B, L] (float32).

    ``F.cross_entropy`` on a flattened *view* fuses log-softmax and gather, so no [B, L, V] copy is
    made beyond its own log-softmax buffer (logits are already float32, see ``pipeline.core.model``).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return ce.view(targets.shape).float()


def change_aware_weights(changed: torch.Tensor, pad_mask: torch.Tensor | None,
                         cfg: LossConfig) -> torch.Tensor:
    """w_i = lambda_chg * 1{m_i = 1} + lambda_same * 1{m_i = 0} (Eq 120), and 0 at padding."""
    real = _real_tokens(changed, pad_mask)
    w = torch.where(changed.bool(), cfg.lambda_chg, cfg.lambda_same).to(torch.float32)
    return w * real


def change_aware_loss_terms(logits: torch.Tensor, x0: torch.Tensor, changed: torch.Tensor,
                            pad_mask: torch.Tensor | None, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator sum_i w_i l_i and denominator sum_i w_i of Eq 120, separately.

    A data-parallel / gradient-accumulation trainer sums both over the global batch before dividing,
    which makes the loss independent of how the batch is sharded.
    """
    w = change_aware_weights(changed, pad_mask, cfg)
    ce = per_token_cross_entropy(logits, x0)
    return (torch.where(w > 0, ce, 0.0) * w).sum(), w.sum()


def change_aware_loss(logits: torch.Tensor, x0: torch.Tensor, changed: torch.Tensor,
                      pad_mask: torch.Tensor | None, lambda_chg: float | None = None,
                      lambda_same: float | None = None, cfg: LossConfig | None = None) -> torch.Tensor:
    """Change-aware training objective, Eq 120 (paper Appendix E.1):

        L_train = sum_i w_i l_i / sum_i w_i,   w_i = lambda_chg 1{m_i = 1} + lambda_same 1{m_i = 0},

    l_i = -log p_theta(x0_i | x_t), m_i = ``changed``; padding positions get w_i = 0. Pass either the
    two lambdas or a :class:`LossConfig` (validated: lambda_chg >= lambda_same >= 0).
    """
    if cfg is None:
        defaults = LossConfig()
        cfg = LossConfig(defaults.lambda_chg if lambda_chg is None else lambda_chg,
                         defaults.lambda_same if lambda_same is None else lambda_same)
    elif lambda_chg is not None or lambda_same is not None:
        raise ValueError("pass either lambda_chg/lambda_same or cfg, not both")
    numerator, denominator = change_aware_loss_terms(logits, x0, changed, pad_mask, cfg)
    return numerator / denominator.clamp_min(torch.finfo(torch.float32).tiny)


def elbo_weighted_loss(per_token_ce: torch.Tensor, weights: torch.Tensor,
                       pad_mask: torch.Tensor | None) -> torch.Tensor:
    """sum_i weights_i * ce_i over real tokens / number of real tokens: a bound in nats per token.

    ``weights`` is Float[B, L] (per position, zero where the bound has no term, e.g. unmasked positions
    under MDLM) or Float[B] (one weight per sequence, broadcast over L). The likelihood module supplies
    them; this function only handles the reduction and the padding.
    """
    real = _real_tokens(per_token_ce, pad_mask)
    if weights.dim() == 1:
        weights = weights[:, None].expand_as(per_token_ce)
    if weights.shape != per_token_ce.shape:
        raise ValueError(f"weights shape {tuple(weights.shape)} does not match {tuple(per_token_ce.shape)}")
    terms = torch.where(real, weights.float() * per_token_ce, 0.0)
    return terms.sum() / real.sum().clamp_min(1)


def ar_loss(logits: torch.Tensor, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy: logits[:, i] predicts x[:, i + 1]; padded targets are skipped."""
    ce = per_token_cross_entropy(logits[:, :-1], x[:, 1:])
    real = _real_tokens(x, pad_mask)[:, 1:]
    return torch.where(real, ce, 0.0).sum() / real.sum().clamp_min(1)

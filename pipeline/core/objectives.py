"""Training objectives: what the trainer, validation, evaluation and the tests all call.

An objective owns the corruption of a clean batch, the per-token loss, its weights and the bound
reported on held-out data. Two exist:

* :class:`DiffusionObjective` - corrupt x0 with the kernel at t, predict x0 from x_t. The loss is
  Eq 120's change-aware cross-entropy (``loss="change_aware"``, the paper's objective) or the
  kernel's own ELBO (``loss="elbo"``): for ``mask`` exactly MDLM's objective (cross-entropy of the
  masked positions weighted by -alpha'_t / (1 - alpha_t), SUBS), for every other kernel the per-token
  integrand of the conditional-path ELBO (``pipeline.core.ct_elbo``), or for SemDLM+ with
  ``elbo_chain="resampling"`` the resampling chain's (``pipeline.core.ct_resample``). The reported bounds
  are the kernel's (``pipeline.core.likelihood.bound_estimates``).
* :class:`AutoregressiveObjective` - no corruption, next-token cross-entropy; the bound is the exact NLL.

A loss is ``numerator / denominator`` with ``numerator = sum_i w_i l_i`` (:func:`weighted_sum`)
and the denominator from :meth:`prepare` (sum of Eq 120 weights, or the number of real tokens for
the NELBO-weighted loss). The trainer sums both over the global batch before dividing, so the
gradient does not depend on how the batch is sharded.

Masks: ``real`` is True at real (non-padding) tokens. All losses are in nats; bits = nats / ln 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.core import likelihood
from pipeline.core.ct_elbo import ctelbo_per_token, posterior_nll_per_token
from pipeline.core.ct_resample import resampled_per_token, resampling_applies
from pipeline.core.kernels import Kernel, alpha_and_derivative
from pipeline.core.posterior import PLAIN, Reading

LOSSES = ("change_aware", "elbo")


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


# --------------------------------------------------------------------------- building blocks
def per_token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target] per position: Float[B, L, V], Long[B, L] -> Float[B, L].

    ``F.cross_entropy`` on a flattened *view* fuses log-softmax and gather, so no [B, L, V] copy is
    made beyond its own log-softmax buffer (logits are already float32, see ``pipeline.core.model``).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return ce.view(targets.shape).float()


def weighted_sum(token_losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i l_i; positions with w_i = 0 contribute exactly 0 even if l_i is inf/nan (padding)."""
    return (torch.where(weights > 0, token_losses, 0.0) * weights).sum()


def change_aware_weights(changed: torch.Tensor, real: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Eq 120's weights: w_i = lambda_chg 1{m_i = 1} + lambda_same 1{m_i = 0}, and 0 at padding."""
    w = torch.where(changed.bool(), cfg.lambda_chg, cfg.lambda_same).to(torch.float32)
    return w * real


def mdlm_time_weights(kernel: Kernel, t: torch.Tensor, changed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """MDLM's continuous-time NELBO weight -alpha'_t / (1 - alpha_t) on changed positions (Sahoo et al. 2024, Eq 10).

    Exact NELBO weighting for the mask kernel (changed = masked); for the other kernels it is the
    same time weighting of a cross-entropy surrogate (their bounds are in pipeline.core.likelihood).
    """
    alpha, dalpha = alpha_and_derivative(kernel.cfg, t)
    w = (-dalpha / (1.0 - alpha).clamp_min(1e-6)).to(torch.float32)
    return w[:, None] * (changed & real)


def next_token_nll(logits: torch.Tensor, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Exact NLL per sequence, [B] nats in float64: logits[:, i] predicts x[:, i + 1]; padded targets skipped."""
    logp = torch.log_softmax(logits.to(torch.float64)[:, :-1], -1)
    nll = -logp.gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (nll * real[:, 1:]).sum(-1)


# --------------------------------------------------------------------------- objectives
@dataclass
class ObjectiveBatch:
    """One prepared micro-batch: what the model sees, what it must predict, and how each target weighs."""

    inputs: torch.Tensor  # Long[B, L]: x_t (diffusion) or x (autoregressive)
    t: torch.Tensor | None  # Float[B] diffusion times, None for the AR baseline
    targets: torch.Tensor  # Long[B, L] (x0) or Long[B, L - 1] (next tokens)
    weights: torch.Tensor  # Float, the shape of targets; 0 at padding
    denominator: torch.Tensor  # scalar: the loss is sum_i w_i l_i / denominator


class DiffusionObjective:
    """Corrupt with ``kernel`` at t, predict x0 from x_t; Eq 120 or the kernel's own ELBO."""

    autoregressive = False

    def __init__(self, kernel: Kernel, loss: str = "change_aware", loss_cfg: LossConfig | None = None,
                 reading: Reading = PLAIN, elbo_chain: str = "flux"):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if elbo_chain == "resampling" and not (loss == "elbo" and reading.kernel_aware and resampling_applies(kernel)):
            raise ValueError(f"elbo_chain=resampling needs loss=elbo, the kernel-aware reading and a kNN kernel with a "
                             f"global branch (SemDLM+), got loss={loss!r}, kernel {kernel.cfg.name!r}")
        self.kernel, self.loss, self.loss_cfg, self.elbo_chain = kernel, loss, loss_cfg or LossConfig(), elbo_chain
        # ``reading``: how bounds read the output (with the change-aware correction); the loss reads it without
        self.reading, self.train_reading = reading, reading.uncorrected()

    def prepare(self, x0: torch.Tensor, real: torch.Tensor, t: torch.Tensor,
                generator: torch.Generator | None = None) -> ObjectiveBatch:
        """Draw x_t ~ q_t(. | x0) and weigh every position."""
        xt, changed = self.kernel.sample_xt(x0, t, generator=generator)
        return self.weigh(x0, real, xt, t, changed)

    def weigh(self, x0: torch.Tensor, real: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
              changed: torch.Tensor) -> ObjectiveBatch:
        """The batch of an already drawn x_t (``changed`` = x_t != x0 as returned by ``sample_xt``)."""
        if self.loss == "change_aware":
            w = change_aware_weights(changed, real, self.loss_cfg)
            return ObjectiveBatch(xt, t, x0, w, w.sum())
        denominator = real.sum().to(torch.float32)  # an ELBO loss is in nats per real token
        if self._mdlm:
            return ObjectiveBatch(xt, t, x0, mdlm_time_weights(self.kernel, t, changed, real), denominator)
        return ObjectiveBatch(xt, t, x0, real.to(torch.float32), denominator)  # the integrand carries the weights

    @property
    def _mdlm(self) -> bool:
        """``loss="elbo"`` on an absorbing kernel (mask): MDLM's weighted cross-entropy, the conditional-path
        ELBO's exact form there."""
        return self.kernel.cfg.absorbing

    def logits(self, model, batch: ObjectiveBatch) -> torch.Tensor:
        return model(batch.inputs, batch.t)

    def token_losses(self, logits: torch.Tensor, batch: ObjectiveBatch) -> torch.Tensor:
        if self.loss == "elbo" and not self._mdlm:
            integrand = resampled_per_token if self.elbo_chain == "resampling" else ctelbo_per_token
            return integrand(self.kernel, logits, batch.targets, batch.inputs, batch.t,
                             mask=batch.weights > 0, reading=self.train_reading).float()
        if self.loss == "change_aware" and not self.train_reading.is_plain:  # Eq 120 on p ∝ f q_t(x_t | v)
            return posterior_nll_per_token(self.kernel, logits, batch.targets, batch.inputs, batch.t,
                                           mask=batch.weights > 0, reading=self.train_reading).float()
        if self.loss == "elbo":  # MDLM's SUBS: the clean token is never [MASK]
            mask_id = torch.tensor([self.kernel.mask_id], device=logits.device)
            logits = logits.index_fill(-1, mask_id, -float("inf"))
        return per_token_cross_entropy(logits, batch.targets)

    def loss_terms(self, logits: torch.Tensor, batch: ObjectiveBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(numerator, denominator) of the loss of one batch."""
        return weighted_sum(self.token_losses(logits, batch), batch.weights), batch.denominator

    def bound_names(self, bound: str = "continuous", num_steps: int = 1000) -> tuple[str, ...]:
        """The names :meth:`bound_estimates` returns (known before any data is seen)."""
        if bound == "tstep":
            return (f"discrete_T{num_steps}",)
        return likelihood.continuous_bound_names(self.kernel, self.reading)

    def bound_estimates(self, model, x0: torch.Tensor, real: torch.Tensor, *, bound: str = "continuous",
                        t: torch.Tensor | None = None, generator: torch.Generator | None = None,
                        num_steps: int = 1000, mc_steps: int | None = 8, t_weight: torch.Tensor | None = None,
                        clean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The kernel's likelihood bounds per sequence, {name: [B] nats} (pipeline.core.likelihood.bound_estimates);
        ``clean``: positions held clean (a context, scored nowhere: keep them out of ``real``)."""
        return likelihood.bound_estimates(self.kernel, model, x0, real, bound=bound, t=t, generator=generator,
                                          num_steps=num_steps, mc_steps=mc_steps, reading=self.reading,
                                          t_weight=t_weight, clean=clean)

    @staticmethod
    def scored_tokens(real: torch.Tensor) -> torch.Tensor:
        """How many tokens a bound over ``real`` scores: every real token."""
        return real.sum()


class AutoregressiveObjective:
    """The AR baseline: no corruption, next-token cross-entropy over real targets, exact NLL as its bound."""

    autoregressive = True
    kernel = None

    def prepare(self, x0: torch.Tensor, real: torch.Tensor, t: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> ObjectiveBatch:
        w = real[:, 1:].to(torch.float32)  # weights of the next-token targets
        return ObjectiveBatch(x0, None, x0[:, 1:], w, w.sum())

    def logits(self, model, batch: ObjectiveBatch) -> torch.Tensor:
        # No attention mask: padding only follows real tokens, and causal attention already hides it.
        return model(batch.inputs)[:, :-1]

    def token_losses(self, logits: torch.Tensor, batch: ObjectiveBatch) -> torch.Tensor:
        return per_token_cross_entropy(logits, batch.targets)

    def loss_terms(self, logits: torch.Tensor, batch: ObjectiveBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return weighted_sum(self.token_losses(logits, batch), batch.weights), batch.denominator

    @staticmethod
    def bound_names(bound: str = "continuous", num_steps: int = 1000) -> tuple[str, ...]:
        return ("ar_exact_nll",)

    def bound_estimates(self, model, x0: torch.Tensor, real: torch.Tensor, **_unused) -> dict[str, torch.Tensor]:
        """Exact NLL per sequence of the real next tokens (the first token, always [CLS], is not scored)."""
        return {"ar_exact_nll": next_token_nll(model(x0, real), x0, real)}

    @staticmethod
    def scored_tokens(real: torch.Tensor) -> torch.Tensor:
        return real[:, 1:].sum()


Objective = DiffusionObjective | AutoregressiveObjective


def build_objective(kernel: Kernel | None, loss: str = "change_aware", loss_cfg: LossConfig | None = None,
                    reading: Reading = PLAIN, elbo_chain: str = "flux") -> Objective:
    """The AR objective when there is no kernel (model.causal), else the diffusion objective."""
    if kernel is None:
        return AutoregressiveObjective()
    return DiffusionObjective(kernel, loss, loss_cfg, reading, elbo_chain)

"""How a diffusion network's output is read as the posterior p_theta(x0 | x_t) (docs/likelihood.md Sec 7).

Two parameterisations, recorded with every run and export (:class:`PosteriorConfig`):

* ``direct`` (the reading of every export made before it existed): the logits are the posterior,
  restricted to the clean tokens v with q_t(x_t^i | v) > 0 and renormalised.
* ``kernel`` (the non-mask analogue of MDLM's SUBS): the logits are a clean-token score f_theta(v | x_t)
  and the posterior multiplies in the kernel's own likelihood of the observed token,

      p_theta(v | x_t)_i  ∝  f_theta(v | x_t)_i  q_t(x_t^i | v)                       (:func:`log_posterior`).

  As t -> 0, q_t(z | v) -> delta(z, v) carries the O(t) law a ``direct`` network would have to learn,
  so the bound's integrand grows like log(1/t) instead of 1/t. Nothing is lost: the exact posterior is
  reached with f = p(x0^i | the other positions), t-independent for context-free data. For ``mask``
  (with f([MASK]) = 0) it is SUBS exactly.

On top, the **change-aware correction**: Eq 120 weighs the cross-entropy by lambda_same where x0 = x_t
and lambda_chg elsewhere, so its minimiser is the posterior tilted by lambda_same / lambda_chg at
v = x_t^i. Adding log(lambda_chg / lambda_same) to that logit undoes the tilt exactly
(:attr:`Reading.log_ratio`); it is applied wherever the output is used as a posterior (bounds,
samplers), never in the training loss itself.

**Clean support.** Tokens that never occur as clean tokens get f = 0: the model's output layer carries
a -inf bias there (``DiffusionTransformer.set_clean_support``), so every reader sees it at no cost.
``clean_support``: ``special`` (default) excludes the tokens the tokenizer never writes into text
([PAD], [MASK], the placeholders [unusedN]) when the training data holds none of them; ``observed`` every
token with a zero training count; ``all`` none (the [MASK] token is still never a clean token for any
kernel). ``observed`` is not the default: a test token that the training data never held then has
probability 0 and the test bound is infinite (on the LM1B sample 21.6 % of the test sentences hold one).
"""
from __future__ import annotations

import base64
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pipeline.core.kernel_config import traits_of

PARAMETERIZATIONS = ("kernel", "direct")
CLEAN_SUPPORTS = ("special", "observed", "all")


@dataclass(frozen=True)
class PosteriorConfig:
    """How the network's output becomes p_theta(x0 | x_t); recorded in checkpoints and exports."""

    parameterization: str = "kernel"  # kernel: f_theta * q_t(x_t | v) | direct: the logits are the posterior
    clean_support: str = "special"  # special | observed | all: tokens given f = 0 (see the module docstring)
    change_correction: bool = True  # change_aware models: add log(lambda_chg / lambda_same) at v = x_t^i

    def __post_init__(self):
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}")
        if self.clean_support not in CLEAN_SUPPORTS:
            raise ValueError(f"clean_support must be one of {CLEAN_SUPPORTS}, got {self.clean_support!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# How an export without a "posterior" record is read: what every reader did before the record existed.
LEGACY = PosteriorConfig(parameterization="direct", clean_support="all", change_correction=False)


@dataclass(frozen=True)
class Reading:
    """What a bound or a sampler applies to the logits: the resolved :class:`PosteriorConfig` of one model."""

    kernel_aware: bool = False
    log_ratio: float = 0.0  # the change-aware correction, added to the logit of v = x_t^i (0: none)
    mask_id: int | None = None  # a token never read as clean (the [MASK] of models without a support bias)

    @property
    def is_plain(self) -> bool:
        """Today's reading: softmax restricted to q_t(z | v) > 0, nothing added."""
        return not self.kernel_aware and self.log_ratio == 0.0

    def uncorrected(self) -> Reading:
        return Reading(self.kernel_aware, 0.0, self.mask_id)


PLAIN = Reading()


def legacy_reading(mask_id: int | None) -> Reading:
    """How a model without a record is read, as every model was before it: the raw softmax, [MASK] never clean."""
    return Reading(False, 0.0, mask_id)


def reading_of(model, mask_id: int | None = None) -> Reading:
    """The reading a loaded model carries (``model.posterior_reading``, set by the export loader and the trainer);
    :func:`legacy_reading` for a model without one."""
    reading = getattr(model, "posterior_reading", None)
    return reading if reading is not None else legacy_reading(mask_id)


def excluded_token(kernel, reading: Reading) -> int | None:
    """The token never read as clean beyond the model's own support: [MASK] for ``mask`` (SUBS) and for a
    reading that names it (models without a support bias)."""
    return kernel.mask_id if kernel.cfg.absorbing else reading.mask_id


def _plus_at_observed(lg: torch.Tensor, z: torch.Tensor, value: float) -> torch.Tensor:
    """[N, V] logits with ``value`` added at v = z_n (the change-aware correction)."""
    return lg.scatter_add(-1, z.unsqueeze(-1), torch.full_like(z, value, dtype=lg.dtype).unsqueeze(-1))


def change_log_ratio(loss: str, lambda_chg: float, lambda_same: float) -> float:
    """log(lambda_chg / lambda_same) for a change-aware objective (0 for the ELBO); an error at lambda_same = 0."""
    if loss != "change_aware":
        return 0.0
    if lambda_same <= 0.0:
        raise ValueError("the change-aware correction needs lambda_same > 0: with lambda_same = 0 the loss never "
                         "sees a position that stayed, so nothing says how often to stay (set lambda_same > 0 "
                         "or posterior.change_correction=false)")
    return math.log(lambda_chg / lambda_same)


def make_reading(cfg: PosteriorConfig, kernel_name: str, loss: str = "elbo", lambda_chg: float = 1.0,
                 lambda_same: float = 1.0, mask_id: int | None = None) -> Reading:
    """The reading of a model trained with ``cfg`` under ``loss`` (the correction only for change_aware).

    An absorbing kernel (``mask``) is read as SUBS whatever ``cfg`` says (the kernel-aware form equals it
    there), and the correction is a no-op there (an unmasked position has one possible clean token, a masked one never
    has v = x_t), so neither is recorded as applied.
    """
    if traits_of(kernel_name).absorbing:
        return Reading(False, 0.0, mask_id)
    ratio = change_log_ratio(loss, lambda_chg, lambda_same) if cfg.change_correction else 0.0
    return Reading(cfg.parameterization == "kernel", ratio, mask_id)


# --------------------------------------------------------------------------- dense reading
def log_posterior(reading: Reading, kernel, logits: torch.Tensor, xt: torch.Tensor, t,
                  lik: torch.Tensor | None = None) -> torch.Tensor:
    """log p_theta(v | x_t) per position, [N, V] float64 (-inf where 0); ``logits`` [..., V], ``xt`` [...].

    ``direct``: softmax of the logits restricted to q_t(z | v) > 0; ``kernel``: of logits + log q_t(z | v).
    Plus ``reading.log_ratio`` at v = z, and [MASK] excluded (``reading.mask_id``; always for ``mask``).
    Guard: where the model puts no mass on any v with q_t(z | v) > 0, the weights fall back to
    q_t(z | .) normalised; an x_t no clean token can produce gets all -inf (the samplers keep it as is).
    """
    V = kernel.vocab_size
    z = xt.reshape(-1)
    lg = logits.to(torch.float64).reshape(-1, V)
    lik = kernel.likelihood_of(xt, t).reshape(-1, V) if lik is None else lik
    log_lik = torch.where(lik > 0, lik.clamp_min(1e-300).log(), -math.inf)
    lg = lg + log_lik if reading.kernel_aware else lg.masked_fill(lik <= 0, -math.inf)
    mask_id = excluded_token(kernel, reading)
    if mask_id is not None:
        lg = lg.index_fill(-1, torch.tensor([mask_id], device=lg.device), -math.inf)
        log_lik = log_lik.index_fill(-1, torch.tensor([mask_id], device=lg.device), -math.inf)
    if reading.log_ratio:
        lg = _plus_at_observed(lg, z, reading.log_ratio)
    dead = torch.isinf(lg.amax(-1))
    if bool(dead.any()):  # no mass on any possible clean token: q_t(z | .) itself
        lg = torch.where(dead.unsqueeze(-1), log_lik, lg)
    out = torch.log_softmax(lg, -1)
    return torch.where(torch.isnan(out), -math.inf, out)


def posterior_probs(reading: Reading, kernel, logits: torch.Tensor, xt: torch.Tensor, t,
                    lik: torch.Tensor | None = None) -> torch.Tensor:
    """exp(:func:`log_posterior`), [..., V] like ``logits`` (rows of impossible x_t are all 0)."""
    return log_posterior(reading, kernel, logits, xt, t, lik).exp().reshape(logits.shape)


def clean_score_logits(reading: Reading, kernel, logits: torch.Tensor, xt: torch.Tensor, t) -> torch.Tensor:
    """The clean-token scores f (log, up to a constant per position) a model's output stands for, [N, V]:
    the logits themselves (``kernel``) or the logits - log q_t(x_t | v) (``direct``: the converted
    posterior), plus the correction at v = x_t. UDLM's closed form is fed these (its optimum is f)."""
    V = kernel.vocab_size
    z = xt.reshape(-1)
    lg = logits.to(torch.float64).reshape(-1, V)
    if not reading.kernel_aware:
        lik = kernel.likelihood_of(xt, t).reshape(-1, V)
        lg = lg - torch.where(lik > 0, lik.clamp_min(1e-300).log(), math.inf)
    if reading.log_ratio:
        lg = _plus_at_observed(lg, z, reading.log_ratio)
    if reading.mask_id is not None:
        lg = lg.index_fill(-1, torch.tensor([reading.mask_id], device=lg.device), -math.inf)
    return lg


# --------------------------------------------------------------------------- the clean support
def clean_support_mask(mode: str, counts: np.ndarray | None, special_ids=(), placeholder_ids=()) -> np.ndarray:
    """Bool [V]: tokens that may be clean. ``counts``: the training data's unigram counts.

    ``special``: all but ``special_ids`` (pass [PAD] and [MASK]) and ``placeholder_ids`` ([unusedN]) the
    training data never holds; ``observed``:
    tokens with a positive count; ``all``: every token (the caller still excludes [MASK]).
    """
    if counts is None:
        raise ValueError("the clean support needs the training data's unigram counts")
    counts = np.asarray(counts)
    support = np.ones(counts.shape[0], dtype=bool)
    if mode == "observed":
        support = counts > 0
    elif mode == "special":
        ids = np.asarray(sorted({int(i) for i in special_ids} | {int(i) for i in placeholder_ids}), dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < counts.shape[0])]
        support[ids[counts[ids] == 0]] = False
    elif mode != "all":
        raise ValueError(f"clean_support must be one of {CLEAN_SUPPORTS}, got {mode!r}")
    if not support.any():
        raise ValueError("the clean support is empty: the training data's unigram counts are all zero")
    return support


def encode_support(support: np.ndarray | torch.Tensor) -> dict:
    """A support as JSON: {"size": V, "excluded": n, "bits": base64 of the packed bool array}."""
    arr = np.asarray(support.cpu() if isinstance(support, torch.Tensor) else support, dtype=bool)
    return {"size": int(arr.size), "excluded": int((~arr).sum()),
            "bits": base64.b64encode(np.packbits(arr).tobytes()).decode("ascii")}


def decode_support(record: dict) -> torch.Tensor:
    """Bool [V] from :func:`encode_support`'s record (ValueError when it does not decode to its size)."""
    size = int(record["size"])
    packed = np.frombuffer(base64.b64decode(record["bits"].encode("ascii"), validate=True), dtype=np.uint8)
    bits = np.unpackbits(packed)
    if bits.size < size or int((~bits[:size].astype(bool)).sum()) != int(record["excluded"]):
        raise ValueError("the recorded clean support does not decode to its size and count")
    return torch.from_numpy(bits[:size].astype(bool))


# --------------------------------------------------------------------------- the record in checkpoints and exports
def posterior_record(cfg: PosteriorConfig, reading: Reading, support) -> dict:
    """What a checkpoint marker and an export's config.json hold: the config, the resolved reading, the support."""
    return {**cfg.to_dict(), "kernel_aware": reading.kernel_aware, "log_ratio": reading.log_ratio,
            "mask_id": reading.mask_id, "support": None if support is None else encode_support(support)}


def reading_from_record(record: dict | None, mask_id: int | None) -> tuple[Reading, torch.Tensor | None]:
    """(reading, support or None) of a record; no record (an export or run older than it): today's reading
    of the raw softmax, with [MASK] never clean (``mask_id``), as the samplers always read it."""
    if record is None:
        return legacy_reading(mask_id), None
    support = None if record.get("support") is None else decode_support(record["support"])
    return Reading(bool(record["kernel_aware"]), float(record["log_ratio"]), record.get("mask_id")), support

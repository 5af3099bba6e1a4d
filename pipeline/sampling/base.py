"""Sampler configuration and the denoiser wrapper shared by every sampler (the block loop: generate.py).

Semi-autoregressive generation (paper Sec 5.1 "Generation Setup"): the sequence of ``seq_len``
tokens is produced in ``strides`` consecutive blocks; block b is initialised from the kernel's
reference distribution at t = 1 (the global transition prior; all-[MASK] for the mask kernel) and
denoised with ``steps / strides`` model calls while the earlier blocks stay fixed as clean context.
``--steps`` is the total number of denoising steps over all blocks. Conditional generation (a prompt,
an infill template: pipeline/sampling/template.py) fixes tokens that every sampler keeps through
:meth:`Denoiser.hold`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from pipeline.core.posterior import Reading, posterior_probs, reading_of

from .penalty import PenaltyConfig, SemanticAssociation, apply_semantic_frequency_penalty
from .template import GenerationTemplate

METHODS = ("ctmc", "blockwise", "tau_leaping", "mdlm")
HAZARDS = ("integrated", "frozen")  # ctmc: how a leap turns the rates into a jump probability (ctmc.py)
CHAINS = ("auto", "flux", "resampling")  # ctmc: auto = resampling for SemDLM+ and uniform, else flux
MDLM_SCHEDULES = ("ancestral", "fixed", "tc", "dtc")
REMASK = ("none", "remdm_cap")


@dataclass(frozen=True)
class SamplerConfig:
    """Everything that decides a sample besides the model, the kernel and the seed."""

    method: str = "blockwise"
    steps: int = 128  # total denoising steps over all blocks
    seq_len: int = 128
    strides: int = 2  # number of semi-autoregressive blocks (paper: 2)
    top_k: int | None = None  # truncation of the clean proposal
    top_p: float | None = None
    rho: float = 1.0  # exponent of Eq 121
    freeze_threshold: float | None = None  # blockwise: keep a token for good once p(x_t^i) >= this
    schedule: str = "ancestral"  # mdlm: ancestral (MDLM) | fixed | tc | dtc (pipeline/sampling/unmasking.py)
    remask: str = "none"  # mdlm ancestral: none | remdm_cap (ReMDM, Wang et al. 2025)
    remask_eta: float = 0.02  # ReMDM-cap: sigma_t = min(eta, (1 - alpha_s) / alpha_t)
    corrector_steps: int = 1  # ctmc, tau_leaping: corrector moves after each predictor step
    corrector_step_size: float = 1.0  # ctmc: corrector move length, in units of the predictor's step dt
    corrector_frac: float = 0.1  # tau_leaping: share of positions a corrector move re-draws
    hazard: str = "integrated"  # ctmc: integrated | frozen (pipeline/sampling/ctmc.py)
    chain: str = "auto"  # ctmc: auto | flux | resampling, the CTMC realising the marginals (docs/likelihood.md 6.7)
    final_argmax: bool = False  # ctmc: the last step takes argmax p_theta (noise removal, MDLM / DUO)
    cache: bool = True  # mdlm: reuse logits of rows where nothing changed (t-independent models)
    # Past the context (pipeline/sampling/generate.py): ``length`` tokens in all, the blocks after the first
    # ``seq_len`` each conditioned on the last seq_len - block_len tokens (MDLM's semi-autoregressive strides).
    length: int | None = None  # None: seq_len
    entropy_stop: float | None = None  # BD3-LM's rule: stop a row once its last entropy_window tokens have
    entropy_window: int = 256  # an empirical entropy below this many nats (BD3-LM: 4 nats over 256 tokens)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)

    def __post_init__(self):
        def fail(msg):
            raise ValueError(f"invalid sampler config: {msg}")
        if self.method not in METHODS:
            fail(f"method must be one of {METHODS}, got {self.method!r}")
        if self.strides < 1 or self.seq_len < 1:
            fail(f"strides and seq_len must be >= 1, got {self.strides}, {self.seq_len}")
        if self.seq_len % self.strides:
            fail(f"seq_len={self.seq_len} must be divisible by strides={self.strides}")
        if self.steps < self.strides or self.steps % self.strides:
            fail(f"steps={self.steps} must be a positive multiple of strides={self.strides} "
                 "(steps are split evenly over the blocks)")
        if self.schedule not in MDLM_SCHEDULES:
            fail(f"schedule must be one of {MDLM_SCHEDULES}, got {self.schedule!r}")
        if self.schedule != "ancestral" and self.steps_per_block > self.block_len:
            fail(f"the {self.schedule!r} unmasking schedule reveals >= 1 token per step: steps per block "
                 f"({self.steps_per_block}) must be <= block length ({self.block_len})")
        if self.hazard not in HAZARDS:
            fail(f"hazard must be one of {HAZARDS}, got {self.hazard!r}")
        if self.chain not in CHAINS:
            fail(f"chain must be one of {CHAINS}, got {self.chain!r}")
        if not self.corrector_step_size > 0:
            fail(f"corrector_step_size must be > 0, got {self.corrector_step_size}")
        if self.remask not in REMASK:
            fail(f"remask must be one of {REMASK}, got {self.remask!r}")
        if self.top_k is not None and self.top_k < 1:
            fail(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            fail(f"top_p must be in (0, 1], got {self.top_p}")
        if self.rho < 0:
            fail(f"rho must be >= 0, got {self.rho}")
        if self.freeze_threshold is not None and not 0 < self.freeze_threshold <= 1:
            fail(f"freeze_threshold must be in (0, 1], got {self.freeze_threshold}")
        if not 0 <= self.remask_eta <= 1 or not 0 <= self.corrector_frac <= 1 or self.corrector_steps < 0:
            fail("remask_eta and corrector_frac must lie in [0, 1], corrector_steps >= 0")
        if self.length is not None and self.length <= self.seq_len:
            fail(f"length={self.length} must exceed seq_len={self.seq_len} (the window the model sees); "
                 "for shorter samples set seq_len")
        if self.entropy_stop is not None and not self.entropy_stop > 0 or self.entropy_window < 1:
            fail(f"entropy_stop must be > 0 and entropy_window >= 1, got {self.entropy_stop}, {self.entropy_window}")

    @property
    def block_len(self) -> int:
        return self.seq_len // self.strides

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.strides

    @property
    def total_len(self) -> int:
        """Tokens per sample: ``length`` past the context, else ``seq_len``."""
        return self.length or self.seq_len

    def to_dict(self) -> dict:
        """The fields; the any-length ones only when set, so that earlier artifacts keep their freshness key."""
        d = asdict(self)
        for name in ("length", "entropy_stop"):
            if d[name] is None:
                del d[name]
        if self.entropy_stop is None:
            del d["entropy_window"]
        return d


class Denoiser:
    """p_theta(x0 | x_t) for the positions of the current block, with Eq 23 applied, in float64.

    Counts network calls (``calls``) and positions evaluated, which the tests and the benchmark use.
    ``template`` (pipeline/sampling/template.py, one row per batch row) fixes tokens: the block
    samplers pass every state through :meth:`hold`; without one every position is free.
    """

    def __init__(self, model, kernel, cfg: SamplerConfig, association: SemanticAssociation | None = None,
                 template: GenerationTemplate | None = None, reading: Reading | None = None):
        self.model, self.kernel, self.cfg, self.association = model, kernel, cfg, association
        self.absorbing = kernel.cfg.absorbing
        self.template = template
        # how the output becomes p_theta(x0 | x_t) (pipeline/core/posterior.py): the model's own record
        self.reading = reading if reading is not None else reading_of(model, kernel.mask_id)
        self.calls = 0
        self.entropy_cut: torch.Tensor | None = None  # Long[B]: where generate cut a low-entropy row (-1: no cut)

    def free(self, start: int, length: int) -> torch.Tensor | None:
        """Bool[B, length]: the generated positions start..start+length-1 (None: all of them)."""
        return None if self.template is None else self.template.free[:, start:start + length]

    def hold(self, block: torch.Tensor, start: int) -> torch.Tensor:
        """``block`` (positions start..) with the template's fixed tokens put back; a no-op without one."""
        if self.template is None:
            return block
        sl = slice(start, start + block.shape[1])
        return torch.where(self.template.free[:, sl], block, self.template.tokens[:, sl])

    @property
    def time_conditioned(self) -> bool:
        model_cfg = getattr(self.model, "cfg", None)
        return bool(getattr(model_cfg, "conditioned", True))

    @torch.no_grad()
    def logits(self, x: torch.Tensor, t: float | torch.Tensor, start: int) -> torch.Tensor:
        """Penalised logits [B, L - start, V] (float32) of positions start.. of x [B, L] at time t (float or [B])."""
        self.calls += 1
        t_vec = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0]).contiguous()
        logits = self.model(x, t_vec)[:, start:]
        return apply_semantic_frequency_penalty(logits, x, self.cfg.penalty, self.association, start,
                                                ignore_id=self.kernel.mask_id if self.absorbing else None,
                                                inplace=True)  # fresh logits of this call

    def probs_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax in float64; [MASK] is never a clean token (the data holds none; SUBS for ``mask``)."""
        logits = logits.to(torch.float64)
        if self.kernel.mask_id is not None:
            logits = logits.clone()
            logits[..., self.kernel.mask_id] = -torch.inf
        return torch.softmax(logits, -1)

    def probs(self, x: torch.Tensor, t: float | torch.Tensor, start: int) -> torch.Tensor:
        """p_theta(x0 | x_t) [B, L - start, V] float64 of positions start.. of x at time t."""
        logits = self.logits(x, t, start)
        if self.reading.is_plain or self.absorbing:  # the raw softmax (the samplers restrict it themselves)
            return self.probs_from_logits(logits)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        return posterior_probs(self.reading, self.kernel, logits, x[:, start:], t)


def time_grid(steps: int) -> list[tuple[float, float]]:
    """(t, s) pairs from t = 1 down to s = 0 in ``steps`` equal steps."""
    return [(1.0 - j / steps, 1.0 - (j + 1) / steps) for j in range(steps)]


def noise_level(kernel, t: float) -> float:
    """p_t = 1 - alpha_t: the probability that a position no longer holds its clean token."""
    return 1.0 - float(kernel.alpha(t))


def initial_block(kernel, batch: int, length: int, device, generator, den: Denoiser | None = None,
                  start: int = 0) -> torch.Tensor:
    """A block at t = 1: draws from the kernel's reference distribution (all [MASK] for ``mask``), with
    ``den``'s fixed tokens at positions start.. (the prior is drawn everywhere: the same random stream)."""
    block = kernel.sample_prior((batch, length), generator=generator).to(device)
    return block if den is None else den.hold(block, start)

"""Kernel configuration: which kernel, its schedules (alpha_t, beta_t; Eq 5-8, Eq 118) and its traits.

Kept apart from the kernel objects (pipeline/core/kernels.py) so the training config, exports and
the stage configs can name and validate a kernel without building one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from pipeline.core import schedules as sch

KERNEL_NAMES = ("mask", "uniform", "semdlm", "semdlm_softmax", "semdlm_plus")
GLOBAL_BRANCHES = ("uniform", "unigram")
SCHEDULE_CHECK_GRID = 10_001  # points of the dense t grid the schedule checks run on


@dataclass(frozen=True)
class KernelConfig:
    """Kernel choice and schedule parameters (names follow Eq 118; see PRESETS)."""

    name: str = "semdlm_plus"
    alpha_schedule: str = "power"  # loglinear | cosine | power (Eq 118)
    alpha_eps: float = 0.0  # loglinear/cosine: alpha_1 = eps
    alpha_min: float = 0.0  # power: alpha_min of Eq 118
    alpha_power: float = 1.0  # power: the exponent "beta" of Eq 118's alpha_t
    beta_max: float = 1.0  # semdlm_plus: beta_t = beta_max t^eta
    beta_power: float = 2.0  # eta
    k_max: int = 64  # neighbourhood size at t = 1 (k_t = 1 + (k_max - 1) t^gamma)
    k_power: float = 1.0  # gamma
    global_branch: str = "uniform"  # semdlm_plus: uniform over valid tokens | unigram prior (Eq 119)
    tau_min: float = 0.1  # semdlm_softmax: tau_t = tau_min (1 - t)^(-tau_power)
    tau_power: float = 1.0
    prior_floor: float = 1e-4  # weight of U(V) mixed into a reference distribution that depends on x0

    def __post_init__(self):
        if self.name not in KERNEL_NAMES:
            raise ValueError(f"kernel name must be one of {KERNEL_NAMES}, got {self.name!r}")
        if self.alpha_schedule not in sch.ALPHA_SCHEDULES:
            raise ValueError(f"alpha_schedule must be one of {sch.ALPHA_SCHEDULES}, got {self.alpha_schedule!r}")
        if self.global_branch not in GLOBAL_BRANCHES:
            raise ValueError(f"global_branch must be one of {GLOBAL_BRANCHES}, got {self.global_branch!r}")
        if not 0.0 <= self.alpha_eps < 1.0:
            raise ValueError(f"alpha_eps must be in [0, 1), got {self.alpha_eps}")
        if not 0.0 <= self.alpha_min < 1.0:
            raise ValueError(f"alpha_min must be in [0, 1), got {self.alpha_min}")
        for field in ("alpha_power", "beta_power", "k_power", "tau_min", "tau_power"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0, got {getattr(self, field)}")
        if not 0.0 <= self.beta_max <= 1.0:
            raise ValueError(f"beta_max must be in [0, 1], got {self.beta_max}")
        if int(self.k_max) != self.k_max or self.k_max < 1:
            raise ValueError(f"k_max must be a positive integer, got {self.k_max}")
        if not 0.0 <= self.prior_floor < 1.0:
            raise ValueError(f"prior_floor must be in [0, 1), got {self.prior_floor}")
        self._check_schedules()

    def _check_schedules(self) -> None:
        """alpha_0 = 1, alpha non-increasing, beta non-decreasing, alpha + beta <= 1 on a dense grid."""
        t = torch.linspace(0.0, 1.0, SCHEDULE_CHECK_GRID, dtype=torch.float64)
        alpha, beta = alpha_of(self, t), beta_of(self, t)
        tol = 1e-9
        if abs(alpha[0].item() - 1.0) > tol:
            raise ValueError(f"{self.name}: alpha_0 must be 1 (t -> 0 returns x0), got {alpha[0].item()}")
        if (alpha[1:] > alpha[:-1] + tol).any():
            raise ValueError(f"{self.name}: alpha_t must be non-increasing in t")
        if (beta[1:] < beta[:-1] - tol).any():
            raise ValueError(f"{self.name}: beta_t must be non-decreasing in t")
        total = alpha + beta
        if (total > 1.0 + tol).any():
            i = int(total.argmax())
            raise ValueError(f"{self.name}: alpha_t + beta_t must be <= 1 for all t; at t={t[i].item():.4f} "
                             f"alpha={alpha[i].item():.4f} beta={beta[i].item():.4f} "
                             f"(lower beta_max or alpha_min)")

    @classmethod
    def preset(cls, name: str, **overrides) -> KernelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown kernel preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    # ---- traits: what the rest of the pipeline needs to know about a kernel, in one place (KernelTraits)
    @property
    def traits(self) -> KernelTraits:
        return traits_of(self.name)

    @property
    def absorbing(self) -> bool:
        return self.traits.absorbing

    @property
    def needs_neighbors(self) -> bool:
        return self.traits.needs_neighbors

    @property
    def continuous_bounds(self) -> tuple[str, ...]:
        return self.traits.continuous_bounds

    def fitted_to_table(self, width: int) -> KernelConfig:
        """k_max capped at a stored table of ``width`` ranks for the kernels that cannot absorb the rest
        (semdlm_plus folds missing ranks into its global branch, so it keeps its k_max)."""
        if self.needs_neighbors and not self.traits.absorbs_missing_ranks and self.k_max > width:
            return replace(self, k_max=width)
        return self


@dataclass(frozen=True)
class KernelTraits:
    """What a kernel *is*, for every module outside the kernel modules: they read these, never the name
    (tests/unit/test_kernel_traits.py fails on a kernel name compared elsewhere), so a new kernel is one entry
    of :data:`TRAITS` plus its branch in ``pipeline/core/kernels.py``."""

    # x_t is x0 or [MASK] (Eq 5): SUBS, MDLM's NELBO and weighted loss, the mdlm sampler and its reveal step
    absorbing: bool
    # a local branch over the neighbour table (the neighbor_index artifact ships with the model)
    needs_neighbors: bool
    # beta_t, the global branch's weight: "complement" (1 - alpha_t), "power" (Eq 118) or "none"
    global_weight: str
    # the local branch's rank weights s_t depend on the clean token (Eq 8's softmax), not on t alone
    rank_weights_per_token: bool
    # k_max past the stored table is folded into the global branch (App E.1) instead of refused
    absorbs_missing_ranks: bool
    # the continuous-time bounds that apply (pipeline.core.likelihood computes them all on one draw of
    # x_t, the report keeps the tightest): MDLM's NELBO for an absorbing kernel (the conditional-path ELBO
    # equals it there), else the conditional-path ELBO, plus UDLM's closed form for the uniform kernel and
    # the resampling chain's bound for SemDLM+ (pipeline/core/ct_resample.py)
    continuous_bounds: tuple[str, ...]
    # the sampler when none is asked for: MDLM's ancestral sampler for an absorbing kernel (ctmc reproduces
    # it there), else ctmc, tau-leaping + predictor-corrector on the reverse rates as the paper ran it (Sec 5.1)
    default_sampler: str
    # the Eq 23 penalty on unless asked off: the semantic kernels (the paper samples them with it; without
    # it they collapse into repeated clusters, Sec 4.2); off for mask and uniform, which are baselines
    penalty_by_default: bool


_ABSORBING = KernelTraits(absorbing=True, needs_neighbors=False, global_weight="complement",
                          rank_weights_per_token=False, absorbs_missing_ranks=False,
                          continuous_bounds=("mdlm_continuous",), default_sampler="mdlm", penalty_by_default=False)
_GLOBAL = replace(_ABSORBING, absorbing=False, continuous_bounds=("ctelbo_continuous", "udlm_continuous"),
                  default_sampler="ctmc")
_LOCAL = replace(_GLOBAL, needs_neighbors=True, global_weight="none", continuous_bounds=("ctelbo_continuous",),
                 penalty_by_default=True)
TRAITS: dict[str, KernelTraits] = {
    "mask": _ABSORBING,
    "uniform": _GLOBAL,
    "semdlm": _LOCAL,
    "semdlm_softmax": replace(_LOCAL, rank_weights_per_token=True),
    # plus the resampling chain's path bound (docs/likelihood.md 6.7; kernel-aware readings only)
    "semdlm_plus": replace(_LOCAL, global_weight="power", absorbs_missing_ranks=True,
                           continuous_bounds=("ctelbo_continuous", "resampled_continuous")),
}
assert set(TRAITS) == set(KERNEL_NAMES)


def traits_of(name: str) -> KernelTraits:
    """The traits of kernel ``name`` (a :data:`KERNEL_NAMES` entry, e.g. ``KernelConfig.name``)."""
    if name not in TRAITS:
        raise ValueError(f"kernel name must be one of {KERNEL_NAMES}, got {name!r}")
    return TRAITS[name]


def alpha_of(cfg: KernelConfig, t: torch.Tensor) -> torch.Tensor:
    """Self-retention alpha_t of the configured schedule (Eq 5/6/7 and Eq 118)."""
    if cfg.alpha_schedule == "loglinear":
        return sch.alpha_loglinear(t, cfg.alpha_eps)
    if cfg.alpha_schedule == "cosine":
        return sch.alpha_cosine(t, cfg.alpha_eps)
    return sch.alpha_power(t, cfg.alpha_min, cfg.alpha_power)


def alpha_and_derivative(cfg: KernelConfig, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, d alpha_t / dt) in float64, the derivative by autograd through the configured schedule.

    The continuous-time bounds and the ELBO-weighted training loss weight by -alpha'_t / (1 - alpha_t).
    """
    with torch.enable_grad():
        t = t.detach().to(torch.float64).requires_grad_(True)
        alpha = alpha_of(cfg, t)
        (dalpha,) = torch.autograd.grad(alpha.sum(), t)
    return alpha.detach(), dalpha


def beta_of(cfg: KernelConfig, t: torch.Tensor) -> torch.Tensor:
    """Weight of the global branch: 1 - alpha_t for mask/uniform, Eq 118 for semdlm_plus, else 0."""
    if cfg.traits.global_weight == "complement":
        return 1.0 - alpha_of(cfg, t)
    if cfg.traits.global_weight == "power":
        return sch.beta_power(t, cfg.beta_max, cfg.beta_power)
    return torch.zeros_like(t)


PRESETS: dict[str, KernelConfig] = {
    "mask": KernelConfig(name="mask", alpha_schedule="loglinear"),
    "uniform": KernelConfig(name="uniform", alpha_schedule="loglinear"),
    "semdlm": KernelConfig(name="semdlm", alpha_schedule="loglinear", k_max=64, k_power=1.0),
    "semdlm_softmax": KernelConfig(name="semdlm_softmax", alpha_schedule="loglinear", k_max=64),
    # Sec 4.2 main text: alpha_t = 1 - t, beta_t = t^2, k_t = 1 + (k_max - 1) t^gamma.
    "semdlm_plus": KernelConfig(name="semdlm_plus", alpha_schedule="power", alpha_min=0.0, alpha_power=1.0,
                                beta_max=1.0, beta_power=2.0, k_max=64, k_power=1.0),
    # Appendix E.1 Eq 118 with alpha_min > 0 (self-retention never fully vanishes).
    "semdlm_plus_eq118": KernelConfig(name="semdlm_plus", alpha_schedule="power", alpha_min=0.02,
                                      alpha_power=1.0, beta_max=0.9, beta_power=2.0, k_max=64, k_power=1.0),
}

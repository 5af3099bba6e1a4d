"""Unmasking-size schedules for masked-diffusion sampling (shared by the sampler and the RS harness).

A masked-diffusion sampler with ``K`` iterations reveals the ``L`` positions of a sequence in ``K``
parallel blocks; the *schedule* fixes how many positions each iteration reveals (``sizes``, a list
of ``K`` positive integers summing to ``L``), and :func:`select_positions` picks *which* masked
positions, uniformly at random — the setting analysed by Cai & Zhao (2026, arXiv 2602.20126,
"Adaptation to Intrinsic Dependence in Diffusion Language Models").

Schedules
---------
``fixed``  the deterministic baseline: sizes as equal as possible (``L // K`` or ``L // K + 1``).
``tc``     randomized, aimed at a KL of order TC/K (total correlation).
``dtc``    randomized, aimed at a KL of order DTC/K (dual total correlation).

Interpretation (only the paper's *summary* was available to us; the exact parameterisation of the
paper is not reproduced here — see ``docs/unmasking_schedules.md``). With an exact mask predictor
and uniformly random positions, the KL of the sampler equals the sum over iterations of the
conditional total correlation of the block revealed together. Writing h(r) for the average
conditional entropy of one position given r random revealed ones, a drop of h between r and r+1
is paid once per position of the same block revealed after it. TC weights that drop by the
number of positions still masked, DTC by the number already revealed; so

* ``tc`` makes the *number of masked positions* shrink geometrically (large blocks first, small
  blocks last): block boundaries lie on a grid that is uniform in ``-log(1 + L - c)``;
* ``dtc`` makes the *number of revealed positions* grow geometrically (small blocks first):
  boundaries lie on a grid uniform in ``log(1 + c)``.

The randomisation is a uniform random shift ``U ~ U[0, 1)`` of that grid: the K - 1 cuts sit at
warped heights ``(k - 1 + U) / (K - 1)``, k = 1..K-1, so the first and last blocks share one grid
cell at random (widths U and 1 - U cells) and the interior blocks are one cell each. Cuts are
rounded to integers and projected so every iteration reveals at least one position. The sizes
therefore vary across seeds, sum to ``L``, and for every shift the schedule is piecewise constant
in ``U`` — which lets :func:`size_distribution` list the *exact* distribution of the size sequence
(used by the exact-KL harness).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

SCHEDULES = ("fixed", "tc", "dtc")


def _check(L: int, K: int) -> None:
    if not (isinstance(L, (int, np.integer)) and isinstance(K, (int, np.integer))):
        raise ValueError(f"L and K must be integers, got L={L!r}, K={K!r}")
    if L < 1:
        raise ValueError(f"sequence length L must be >= 1, got {L}")
    if not 1 <= K <= L:
        raise ValueError(f"number of iterations K must be in [1, L={L}] so that every iteration "
                         f"reveals at least one position, got K={K}")


def fixed_sizes(L: int, K: int) -> list[int]:
    """Deterministic baseline: ``K`` sizes as equal as possible, summing to ``L``."""
    _check(L, K)
    cuts = [(k * L) // K for k in range(K + 1)]
    return [cuts[k + 1] - cuts[k] for k in range(K)]


# --------------------------------------------------------------------------- randomized schedules
def _warp(variant: str, L: int) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """(G, G^{-1}): increasing map of the revealed count c in [0, L] onto [0, 1]."""
    log_l = math.log1p(L)
    if variant == "dtc":  # revealed count grows geometrically
        return (lambda c: math.log1p(c) / log_l), (lambda y: math.expm1(y * log_l))
    if variant == "tc":  # masked count shrinks geometrically
        return (lambda c: 1.0 - math.log1p(L - c) / log_l), (lambda y: L + 1 - math.exp((1.0 - y) * log_l))
    raise ValueError(f"unknown randomized schedule {variant!r}; choose 'tc' or 'dtc'")


def sizes_from_shift(L: int, K: int, variant: str, shift: float) -> list[int]:
    """The size sequence of a randomized schedule for one grid shift ``shift`` in [0, 1)."""
    _check(L, K)
    if not 0.0 <= shift < 1.0:
        raise ValueError(f"shift must lie in [0, 1), got {shift}")
    _, inverse = _warp(variant, L)
    cuts = [0]
    for k in range(1, K):
        target = math.floor(inverse((k - 1 + shift) / (K - 1)) + 0.5)
        # Project: at least one position per iteration, and room for the iterations left.
        cuts.append(min(max(target, cuts[-1] + 1), L - (K - k)))
    cuts.append(L)
    return [cuts[k + 1] - cuts[k] for k in range(K)]


def randomized_sizes(L: int, K: int, variant: str,
                     generator: torch.Generator | np.random.Generator | None = None) -> list[int]:
    """Draw the size sequence of the ``tc`` or ``dtc`` randomized schedule."""
    if isinstance(generator, np.random.Generator):
        shift = float(generator.random())
    else:
        shift = float(torch.rand((), generator=generator, dtype=torch.float64))
    return sizes_from_shift(L, K, variant, shift)


def schedule_sizes(name: str, L: int, K: int,
                   generator: torch.Generator | np.random.Generator | None = None) -> list[int]:
    """Sizes for the schedule ``name`` (one of :data:`SCHEDULES`)."""
    if name == "fixed":
        return fixed_sizes(L, K)
    if name in ("tc", "dtc"):
        return randomized_sizes(L, K, name, generator)
    raise ValueError(f"unknown unmasking schedule {name!r}; choose one of {SCHEDULES}")


def size_distribution(name: str, L: int, K: int) -> list[tuple[float, tuple[int, ...]]]:
    """Exact distribution of the size sequence: ``[(probability, sizes), ...]``, probabilities sum to 1.

    A randomized schedule is piecewise constant in the shift U; its rounding boundaries are where
    ``G^{-1}((k - 1 + U) / (K - 1)) = m + 1/2``, i.e. ``U = (K - 1) * G(m + 1/2) - (k - 1)``. Evaluating at the midpoint
    of each interval between consecutive boundaries enumerates every outcome with its probability.
    """
    if name == "fixed":
        return [(1.0, tuple(fixed_sizes(L, K)))]
    _check(L, K)
    forward, _ = _warp(name, L)
    points = {0.0, 1.0}
    for k in range(1, K):
        for m in range(L):
            u = (K - 1) * forward(m + 0.5) - (k - 1)
            if 0.0 < u < 1.0:
                points.add(u)
    edges = sorted(points)
    outcomes: dict[tuple[int, ...], float] = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi - lo <= 0.0:
            continue
        sizes = tuple(sizes_from_shift(L, K, name, 0.5 * (lo + hi)))
        outcomes[sizes] = outcomes.get(sizes, 0.0) + (hi - lo)
    return sorted(((p, s) for s, p in outcomes.items()), key=lambda ps: ps[1])


# --------------------------------------------------------------------------- position choice
def select_positions(masked: torch.Tensor, counts: torch.Tensor | Sequence[int] | int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick ``counts[b]`` masked positions of row ``b`` uniformly at random (without replacement).

    masked: Bool[B, L]; counts: Long[B] (or an int for every row). Returns Bool[B, L], a subset of
    ``masked``. Raises when a row has fewer masked positions than requested.
    """
    if masked.dim() != 2 or masked.dtype != torch.bool:
        raise ValueError("masked must be a Bool[B, L] tensor")
    counts = torch.as_tensor(counts, dtype=torch.long, device=masked.device).expand(masked.shape[0])
    available = masked.sum(dim=1)
    if bool((counts > available).any()) or bool((counts < 0).any()):
        raise ValueError(f"cannot reveal {counts.tolist()} positions from rows with "
                         f"{available.tolist()} masked positions")
    # Uniform random ranks among masked positions: unmasked ones sort last.
    scores = torch.rand(masked.shape, generator=generator, device=masked.device)
    scores = scores.masked_fill(~masked, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]

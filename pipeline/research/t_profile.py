"""Where does a model's bound come from in t? The per-token integrand of its continuous-time bound on a t grid.

    python -m pipeline.t_profile --model EXPORT [--split DIR] [--sequences 64]
        [--t 1e-4,1e-3,1e-2,0.2,0.99] [--reading recorded|direct|kernel] [--bound auto|ctelbo|resampled]
        [--seed 0] [--out FILE.json]

For each t the test sequences (default: the export's preprocessed test split) are noised once at that
t and the bound's integrand (``--bound``: ``ctelbo``, ``ctelbo_per_token``, the conditional-path ELBO,
MDLM's NELBO for ``mask``; ``resampled``, ``resampled_per_token``, the resampling chain's, docs/likelihood.md
6.7, for a kernel-aware SemDLM+; ``auto``, the default: resampled where it applies, else ctelbo) is evaluated
at every real token with the model's output read as recorded (pipeline/core/posterior.py) or as
``--reading`` says. Printed per t: the mean, median and max over tokens, in nats per token per
unit time. A bound whose mean grows like c / t as t -> 0 carries an extra c ln(1 / t_min) nats per token
and a heavy-tailed Monte-Carlo estimate (docs/likelihood.md Sec 7); like log(1 / t), it is integrable.
A model read with the change-aware correction also gets the uncorrected column. Last line:
``t=<t>:<mean> ...`` for every t.
"""
from __future__ import annotations

import torch

from pipeline.common.errors import library_not_a_command
from pipeline.core.ct_elbo import ctelbo_per_token
from pipeline.core.ct_resample import resampled_per_token, resampling_applies
from pipeline.core.posterior import Reading

DEFAULT_TIMES = (1e-4, 1e-3, 1e-2, 0.2, 0.99)
BOUNDS = ("auto", "ctelbo", "resampled")


def profile_bound(kernel, reading: Reading, which: str = "auto") -> str:
    """``ctelbo`` or ``resampled`` for ``which``; ValueError where the resampling chain's bound does not apply."""
    applies = reading.kernel_aware and resampling_applies(kernel)
    if which == "auto":
        return "resampled" if applies else "ctelbo"
    if which == "resampled" and not applies:
        raise ValueError(f"the resampling chain's bound needs a kernel-aware kNN kernel with a global branch "
                         f"(SemDLM+), not {kernel.cfg.name!r} read {reading}")
    if which not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {which!r}")
    return which


def integrand_profile(model, kernel, sequences: torch.Tensor, pad_id: int | None, times, reading: Reading,
                      batch_size: int = 16, seed: int = 0, bound: str = "ctelbo") -> list[dict]:
    """[{t, mean, median, max, tokens}] of the per-token integrand of ``bound`` (:func:`profile_bound`) at each
    fixed t (one x_t draw per sequence)."""
    integrand = resampled_per_token if profile_bound(kernel, reading, bound) == "resampled" else ctelbo_per_token
    out = []
    device = next(model.parameters()).device if hasattr(model, "parameters") else kernel.device
    for t_value in times:
        gen = torch.Generator(device=device).manual_seed(seed)
        values = []
        for lo in range(0, sequences.shape[0], batch_size):
            x0 = sequences[lo:lo + batch_size].to(device)
            real = torch.ones_like(x0, dtype=torch.bool) if pad_id is None else x0 != pad_id
            t = torch.full((x0.shape[0],), float(t_value), dtype=torch.float32, device=device)
            xt, _ = kernel.sample_xt(x0, t, generator=gen)
            with torch.no_grad():
                per_token = integrand(kernel, model(xt, t), x0, xt, t, mask=real, reading=reading)
            values.append(per_token[real].cpu())
        v = torch.cat(values)
        out.append({"t": float(t_value), "mean": float(v.mean()), "median": float(v.median()),
                    "max": float(v.max()), "tokens": int(v.numel())})
    return out


def reading_as(exported, which: str) -> Reading:
    """The export's recorded reading, or the same with ``which`` (direct | kernel) as the parameterisation."""
    recorded = exported.reading
    if which == "recorded":
        return recorded
    return Reading(which == "kernel", recorded.log_ratio, recorded.mask_id)


if __name__ == "__main__":  # the command is python -m pipeline.t_profile; this module is its library
    raise SystemExit(library_not_a_command(__spec__.name, "pipeline.t_profile"))

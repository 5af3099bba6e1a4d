"""The sampler flags shared by ``python -m pipeline.sample`` and ``python -m pipeline.evaluate``.

:func:`add_sampler_args` adds them to a parser (``grid=True``: --steps, --lambda-freq and
--lambda-sem take comma lists, the evaluate sweep); :func:`sampler_options` turns the parsed flags
into the :class:`~pipeline.sampling.stage.SamplerOptions` both stage configs hold.
"""
from __future__ import annotations

import argparse

from pipeline.common.locks import add_break_lock_argument

from .base import HAZARDS, MDLM_SCHEDULES, METHODS, REMASK
from .penalty import WINDOW_SIDES
from .stage import SamplerOptions


def _floats(text: str) -> list[float]:
    return [float(v) for v in str(text).split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_sampler_args(p: argparse.ArgumentParser, grid: bool = False) -> None:
    """Sampler options; with ``grid`` --steps/--lambda-freq/--lambda-sem take comma lists (sweeps)."""
    p.add_argument("--method", choices=METHODS, default=None, help="default: mdlm for mask, else ctmc")
    p.add_argument("--steps", type=_ints if grid else int, default=[128] if grid else 128,
                   help="total denoising steps over all blocks" + (" (comma list)" if grid else ""))
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=None, help="default: the preprocessed sequence length, else 128")
    p.add_argument("--strides", type=int, default=None,
                   help="semi-autoregressive blocks (paper: 2; default 2, with --infill 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus truncation of the clean proposal (default: 0.9 for blockwise, else none; 1 = off)")
    p.add_argument("--rho", type=float, default=1.0, help="exponent of Eq 121 (blockwise)")
    p.add_argument("--freeze-threshold", type=float, default=None, help="blockwise: freeze tokens this confident")
    p.add_argument("--schedule", choices=MDLM_SCHEDULES, default="ancestral", help="mdlm unmasking schedule")
    p.add_argument("--remask", choices=REMASK, default="none", help="mdlm ancestral: ReMDM remasking")
    p.add_argument("--remask-eta", type=float, default=0.02)
    p.add_argument("--corrector-steps", type=int, default=1, help="ctmc / tau_leaping corrector moves per step")
    p.add_argument("--corrector-step-size", type=float, default=1.0,
                   help="ctmc: corrector move length in units of the predictor step")
    p.add_argument("--corrector-frac", type=float, default=0.1, help="tau_leaping: share of positions re-drawn")
    p.add_argument("--hazard", choices=HAZARDS, default="integrated", help="ctmc: jump probability of a leap")
    p.add_argument("--final-argmax", action="store_true", help="ctmc: last step takes argmax p_theta")
    p.add_argument("--no-cache", action="store_true", help="mdlm: never reuse logits")
    default = " (default: off for mask/uniform, the documented values for the semantic kernels)"
    p.add_argument("--lambda-freq", type=_floats if grid else float, default=[None] if grid else None,
                   help="Eq 23 frequency penalty" + (" (comma list)" if grid else "") + default)
    p.add_argument("--lambda-sem", type=_floats if grid else float, default=[None] if grid else None,
                   help="Eq 23 semantic penalty, needs neighbour tables" + (" (comma list)" if grid else "") + default)
    p.add_argument("--window", type=int, default=16, help="Eq 23 window W")
    p.add_argument("--window-side", choices=WINDOW_SIDES, default="left",
                   help="Eq 23 window: the W positions before i (left, the paper's recent window) or W each side")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--prompt", default=None, metavar="TEXT|FILE",
                      help="fixed prefix; a file: one prompt per non-empty line, sample i uses prompt i mod n")
    cond.add_argument("--infill", default=None, metavar="TEMPLATE",
                      help="generate the [MASK] / [MASK]*N positions of TEMPLATE, e.g. 'The [MASK]*5 sat on the mat'")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="cut each sample after its first [SEP]/EOS past the prompt (skips blocks after it)")
    p.add_argument("--tokenizer", default=None, help="tokenizer for decoding (default: the export's)")
    p.add_argument("--device", default=default_device())
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    add_break_lock_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def sampler_options(args: argparse.Namespace) -> SamplerOptions:
    """The SamplerOptions of parsed :func:`add_sampler_args` flags."""
    return SamplerOptions(
        method=args.method, seq_len=args.seq_len, strides=args.strides, top_k=args.top_k, top_p=args.top_p,
        rho=args.rho, freeze_threshold=args.freeze_threshold, schedule=args.schedule, remask=args.remask,
        remask_eta=args.remask_eta, corrector_steps=args.corrector_steps, corrector_frac=args.corrector_frac,
        corrector_step_size=args.corrector_step_size, hazard=args.hazard, final_argmax=args.final_argmax,
        cache=not args.no_cache, window=args.window, window_side=args.window_side, prompt=args.prompt,
        infill=args.infill, stop_at_eos=args.stop_at_eos)

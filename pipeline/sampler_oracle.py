"""How close does a sampler get to the data with a perfect denoiser? A toy with an exact posterior.

    python -m pipeline.sampler_oracle --kernel semdlm_plus --methods ctmc,blockwise,tau_leaping \\
        --steps 8,32,128 [--samples 20000 --seed 0 --corrector-steps 1]

Last line: ``ctmc_tv=<TV at the largest steps> blockwise_tv=<...> floor=<...> tilted_tv=<...> corrected_tv=<...>``.
Library and the toy's description: pipeline/research/sampler_oracle.py; docs/sampling.md (Oracle).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.research.sampler_oracle import build_sequence_toy, oracle_tv, toy_denoiser
from pipeline.sampling.base import METHODS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", default="semdlm_plus")
    ap.add_argument("--methods", default="ctmc,blockwise,tau_leaping")
    ap.add_argument("--steps", default="8,32,128")
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=6)
    ap.add_argument("--k-max", type=int, default=2)
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--corrector-steps", type=int, default=None, help="ctmc / tau_leaping (default: the sampler's)")
    ap.add_argument("--corrector-step-size", type=float, default=None)
    ap.add_argument("--hazard", default=None)
    ap.add_argument("--chain", default=None, help="ctmc: auto | flux | resampling (docs/likelihood.md 6.7)")
    ap.add_argument("--parameterization", default="kernel", choices=("kernel", "direct"),
                    help="how the Eq-120 optimum of the last line is given: as f (kernel) or as the posterior")
    ap.add_argument("--no-tilted", action="store_true", help="skip the ctmc runs with Eq 120's optimum")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {METHODS}")
    steps = [int(s) for s in args.steps.split(",") if s]
    toy = build_sequence_toy(args.kernel, args.vocab, args.k_max, args.length, args.seed)
    overrides = {k: v for k, v in (("corrector_steps", args.corrector_steps),
                                   ("corrector_step_size", args.corrector_step_size),
                                   ("hazard", args.hazard), ("chain", args.chain)) if v is not None}
    floor = toy.noise_floor(args.samples, args.seed)
    print(f"kernel {args.kernel}: {toy.states.shape[0]} valid sequences of {toy.length} tokens, V = {args.vocab}, "
          f"{args.samples} samples per cell, exact posterior as the denoiser")
    print("| method | " + " | ".join(f"TV @ {s} steps (calls)" for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    last = {}
    for method in methods:
        cells = []
        for s in steps:
            tv, calls = oracle_tv(toy, method, s, args.samples, args.seed, **overrides)
            cells.append(f"{tv:.4f} ({calls:.0f})")
            last[method] = tv
        print(f"| {method} | " + " | ".join(cells) + " |", flush=True)
    print(f"noise floor of {args.samples} exact draws: TV {floor:.4f}")
    extra = ""
    if not args.no_tilted:  # ctmc fed Eq 120's exact optimum, read raw and with the correction
        for which in ("tilted", "corrected"):
            model = toy_denoiser(toy, which, args.parameterization)
            tv, _ = oracle_tv(toy, "ctmc", steps[-1], args.samples, args.seed, model=model, **overrides)
            print(f"ctmc with Eq 120's optimum ({which}, {args.parameterization}) @ {steps[-1]} steps: TV {tv:.4f}")
            extra += f" {which}_tv={tv:.4f}"
    print(" ".join(f"{m}_tv={last[m]:.4f}" for m in methods) + f" floor={floor:.4f}" + extra)
    return 0



if __name__ == "__main__":
    sys.exit(main())

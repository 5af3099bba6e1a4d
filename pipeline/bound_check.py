"""How tight is a kernel's likelihood bound? A context-free toy with an exact NLL and an exact denoiser.

    python -m pipeline.bound_check --kernel semdlm_plus [--vocab 60 --k-max 12 --valid 57 --seed 0]
        [--steps 8 64 512] [--parameterization kernel|direct] [--no-tilted]

Last line: ``exact=<nats> tstep=<nats at the largest T> ctelbo=<nats> tilted=<nats> corrected=<nats>``.
Library and the toy's description: pipeline/research/bound_check.py (run, format_report); docs/likelihood.md 6.6.
"""
from __future__ import annotations

import argparse
import sys

import torch

from pipeline.core.kernels import PRESETS
from pipeline.research.bound_check import format_report, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", default="semdlm_plus", choices=sorted(PRESETS))
    ap.add_argument("--vocab", type=int, default=60)
    ap.add_argument("--k-max", type=int, default=12)
    ap.add_argument("--valid", type=int, default=57)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table-ranks", type=int, default=None, help="stored ranks (default k-max; fewer: folded)")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 64, 512], help="T of the T-step bound")
    ap.add_argument("--exact-max", type=int, default=2000, help="enumerate when vocab <= this")
    ap.add_argument("--mc", type=int, default=4096, help="Monte-Carlo draws of the continuous-time ELBO")
    ap.add_argument("--tstep-n", type=int, default=64, help="large vocab: x0 draws of the T-step bound")
    ap.add_argument("--tstep-draws", type=int, default=16, help="large vocab: step draws per x0")
    ap.add_argument("--parameterization", default="kernel", choices=("kernel", "direct"),
                    help="how Eq 120's exact optimum (tilted= corrected=) is given: as f or as the posterior")
    ap.add_argument("--no-tilted", action="store_true", help="skip the Eq 120 optimum (tilted= corrected=)")
    ap.add_argument("--no-resampled", action="store_true",
                    help="skip the resampling chain's bound (resampled= resampled_relaxed=; vocab <= 200 only)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 when enumerating, where tensors are tiny)")
    a = ap.parse_args(argv)
    if a.threads or a.vocab <= a.exact_max:
        torch.set_num_threads(a.threads or 1)
    res = run(a.kernel, a.vocab, a.k_max, a.valid, a.seed, tuple(a.steps), a.exact_max, a.mc, a.tstep_n,
              a.tstep_draws, a.table_ranks, a.parameterization, not a.no_tilted,
              not a.no_resampled)
    print(format_report(res))
    return 0



if __name__ == "__main__":
    sys.exit(main())

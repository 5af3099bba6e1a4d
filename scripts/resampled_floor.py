"""The frequency floor of a kernel's bound under both realisations of its marginals, on real test text.

    python scripts/resampled_floor.py PREPROCESSED NEIGHBORS [--kernel semdlm_plus] [--sequences 256] [--draws 4]

The denoiser knows only token frequencies: f = the training data's smoothed unigram on the clean support
(what ``pipeline.evaluate`` reports as the frequency floor, pipeline/evaluation/frequency_floor.py). On the
same test tokens, t and x_t draws it prints the unigram cross-entropy of the tokens, the conditional-path
ELBO (the flux chain, docs/likelihood.md Sec 6) and the resampling chain's path bound (Sec 6.7,
pipeline/research/realisation.py), each in nats per token with its slack over the cross-entropy: the part
of a bound that is the bound's, not the model's. t: stratified uniform draws per sequence, clamped at t_min.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.mds_check import read_split_sequences  # noqa: E402
from pipeline.core.ct_elbo import ctelbo_per_token  # noqa: E402
from pipeline.core.kernels import KernelConfig, make_kernel  # noqa: E402
from pipeline.core.likelihood import prior_kl  # noqa: E402
from pipeline.core.posterior import Reading  # noqa: E402
from pipeline.core.time_sampling import T_MIN  # noqa: E402
from pipeline.evaluation.baselines import unigram_log_probs  # noqa: E402
from pipeline.research import realisation  # noqa: E402
from pipeline.training.components import load_upstream  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preprocessed")
    ap.add_argument("neighbors")
    ap.add_argument("--kernel", default="semdlm_plus")
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    kcfg = KernelConfig.preset(a.kernel)
    up = load_upstream(a.preprocessed, a.neighbors, kcfg, splits=("train", "test"))
    kernel = make_kernel(kcfg, up.vocab_size, up.mask_id, up.tables, "cpu")
    log_u = torch.from_numpy(unigram_log_probs(up.unigram_counts())).to(torch.float64)
    support = up.clean_support("special")
    if support is not None:
        log_u[~torch.from_numpy(support)] = -math.inf
    log_u = log_u - torch.logsumexp(log_u, 0)
    u = log_u.exp()
    seqs = read_split_sequences(Path(a.preprocessed) / "test", a.sequences)
    x0_all = torch.as_tensor(np.asarray(seqs), dtype=torch.long)
    real_all = x0_all != up.pad_id if up.pad_id is not None else torch.ones_like(x0_all, dtype=torch.bool)
    g = torch.Generator().manual_seed(a.seed)
    n_seq = x0_all.shape[0]
    per_seq = {k: torch.zeros(n_seq, dtype=torch.float64) for k in ("ce", "flux", "resampled", "relaxed")}
    tokens = int(real_all.sum())
    for i in range(x0_all.shape[0]):
        x0, real = x0_all[i:i + 1], real_all[i:i + 1]
        per_seq["ce"][i] = float(-torch.where(real, log_u[x0], 0.0).sum())
        prior = float(prior_kl(kernel, x0, real))
        u0 = torch.rand((), generator=g, dtype=torch.float64)
        for j in range(a.draws):
            t = float(((u0 + j) / a.draws).clamp(T_MIN, 1.0))
            xt, _ = kernel.sample_xt(x0, torch.tensor([t]), generator=g)
            logits = log_u.to(torch.float32).expand(1, x0.shape[1], -1)
            a_val = ctelbo_per_token(kernel, logits, x0, xt, t, mask=real, reading=Reading(True))
            per_seq["flux"][i] += (prior + float(a_val.sum())) / a.draws
            z, x = xt[real], x0[real]
            for key, relaxed in (("resampled", False), ("relaxed", True)):
                val = realisation.floor_integrand(kernel, u, x, z, t, relaxed=relaxed)
                per_seq[key][i] += (prior + float(val.sum())) / a.draws
        if (i + 1) % 64 == 0:
            done = float(real_all[:i + 1].sum())
            print(f"  {i + 1} sequences: " + "  ".join(f"{k} {float(v[:i + 1].sum()) / done:.4f}"
                                                        for k, v in per_seq.items()), flush=True)
    ce = float(per_seq["ce"].sum()) / tokens
    print(f"{a.kernel}: {n_seq} test sequences, {tokens} tokens, {a.draws} t draws each; nats/token, slack over the "
          "unigram cross-entropy ± its standard error over sequences (paired)")
    print(f"  unigram cross-entropy                 {ce:.4f}")
    for key, label in (("flux", "flux chain (conditional-path ELBO)"), ("resampled", "resampling chain"),
                       ("relaxed", "  its O(V) relaxation")):
        d = per_seq[key] - per_seq["ce"]
        se = float(d.std()) * math.sqrt(n_seq) / tokens
        value = float(per_seq[key].sum()) / tokens
        print(f"  {label:<37} {value:.4f}  slack {float(d.sum()) / tokens:+.4f} ± {se:.4f}")
    gain = per_seq["flux"] - per_seq["resampled"]
    se = float(gain.std()) * math.sqrt(n_seq) / tokens
    print(f"  flux - resampling chain: {float(gain.sum()) / tokens:.4f} ± {se:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

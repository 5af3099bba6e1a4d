"""Inspect a transition kernel: analytic q_t(. | WORD) against empirical frequencies of sample_xt.

    python -m pipeline.inspect_kernel --kernel semdlm_plus --neighbors artifacts/neighbors \\
        --token king --t 0.5 --samples 20000

Prints the top entries of the closed-form marginal next to the frequencies of N draws and, as its
last line, ``tv=<total-variation distance between them>``. ``--vocab-size V`` skips the tokenizer
(ids instead of words; ``--token`` is then an integer id), for tests and synthetic tables.
"""
from __future__ import annotations

import argparse
import sys

import torch

from pipeline.common.artifacts import stage_errors
from pipeline.core.kernels import PRESETS, KernelConfig, build_kernel
from pipeline.common.neighbor_artifact import load_neighbor_tables


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.inspect_kernel", description=__doc__.split("\n")[0])
    p.add_argument("--kernel", required=True, choices=sorted(PRESETS), help="kernel preset")
    p.add_argument("--neighbors", help="neighbour-table artifact directory (needed by the semdlm kernels)")
    p.add_argument("--token", required=True, help="the clean token x0 (a word, or an id with --vocab-size)")
    p.add_argument("--t", type=float, required=True, help="diffusion time in [0, 1]")
    p.add_argument("--samples", type=int, default=10_000, help="number of draws of x_t (default 10000)")
    p.add_argument("--top", type=int, default=10, help="entries to print (default 10)")
    p.add_argument("--k-max", type=int, default=None, help="override the preset's k_max")
    p.add_argument("--tokenizer", default=None, help="tokenizer path (default: offline bert-base-uncased)")
    p.add_argument("--vocab-size", type=int, default=None, help="synthetic vocabulary: ids, no tokenizer")
    p.add_argument("--mask-id", type=int, default=None, help="[MASK] id with --vocab-size (default V - 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0.0 <= args.t <= 1.0:
        p.error(f"--t must be in [0, 1], got {args.t}")
    if args.samples < 1 or args.top < 1:
        p.error("--samples and --top must be positive")
    return args


def inspect(args: argparse.Namespace) -> list[str]:
    """Build the kernel, compare analytic and empirical q_t(. | token); return the lines to print."""
    tables = load_neighbor_tables(args.neighbors) if args.neighbors else None
    if args.vocab_size is not None:
        vocab_size, mask_id = args.vocab_size, (args.mask_id if args.mask_id is not None else args.vocab_size - 1)
        decode = str
        try:
            token_id = int(args.token)
        except ValueError:
            raise ValueError(f"with --vocab-size, --token must be an integer id, got {args.token!r}") from None
    else:
        from pipeline.common.hf_assets import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        vocab_size, mask_id = len(tok), tok.mask_token_id
        token_id = tok.convert_tokens_to_ids(args.token)
        if token_id is None or token_id == tok.unk_token_id and args.token != tok.unk_token:
            raise ValueError(f"token {args.token!r} is not in the tokenizer's vocabulary (use a WordPiece, "
                             "e.g. 'king' or '##ing')")
        decode = lambda i: tok.convert_ids_to_tokens(int(i))  # noqa: E731
    if not 0 <= token_id < vocab_size:
        raise ValueError(f"token id {token_id} outside [0, {vocab_size})")
    if tables is not None and tables.vocab_size != vocab_size:
        raise ValueError(f"neighbour table has V={tables.vocab_size}, the vocabulary has {vocab_size}")
    overrides = {"k_max": args.k_max} if args.k_max else {}
    if tables is not None and not args.k_max:  # default: the neighbourhood the stored table supports
        overrides["k_max"] = min(PRESETS[args.kernel].k_max, tables.k_max)
    cfg = KernelConfig.preset(args.kernel, **overrides)
    kernel = build_kernel(cfg, vocab_size, mask_id=mask_id, **(tables.kernel_inputs() if tables else {}))

    analytic = kernel.marginal_rows(torch.tensor([token_id]), args.t)[0]
    gen = torch.Generator().manual_seed(args.seed)
    x0 = torch.full((1, args.samples), token_id)
    xt, _ = kernel.sample_xt(x0, torch.tensor([args.t]), generator=gen)
    empirical = torch.bincount(xt.flatten(), minlength=vocab_size).double() / args.samples
    tv = 0.5 * (analytic - empirical).abs().sum().item()

    alpha, beta, lam = (float(x) for x in kernel.branch_weights(args.t))
    lines = [f"kernel={cfg.name} token={args.token} (id {token_id}) t={args.t} samples={args.samples}",
             f"alpha_t={alpha:.4f} local={lam:.4f} global={beta:.4f}",
             f"{'rank':>4}  {'token':<20} {'id':>7}  {'q_t':>9}  {'empirical':>9}"]
    top = torch.argsort(analytic, descending=True)[: args.top]
    for rank, j in enumerate(top.tolist(), 1):
        lines.append(f"{rank:>4}  {decode(j):<20} {j:>7}  {analytic[j].item():9.5f}  {empirical[j].item():9.5f}")
    lines.append(f"tv={tv:.6f}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    with stage_errors("inspect_kernel"):
        print("\n".join(inspect(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

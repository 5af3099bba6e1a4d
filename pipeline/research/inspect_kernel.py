"""Inspect a transition kernel: analytic q_t(. | WORD) against empirical frequencies of sample_xt.

    python -m pipeline.inspect_kernel --kernel semdlm_plus --neighbors artifacts/neighbors \\
        --token king --t 0.5 --samples 20000

Prints the top entries of the closed-form marginal next to the frequencies of N draws and, as its
last line, ``tv=<total-variation distance between them>``. ``--vocab-size V`` skips the tokenizer
(ids instead of words; ``--token`` is then an integer id), for tests and synthetic tables.
Library of ``python -m pipeline.inspect_kernel`` (pipeline/inspect_kernel.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pipeline.common.artifacts import ConfigError
from pipeline.common.cli_fields import cli_field
from pipeline.common.errors import library_not_a_command
from pipeline.common.neighbor_artifact import load_neighbor_tables
from pipeline.core.kernels import PRESETS, KernelConfig, make_kernel


@dataclass(frozen=True)
class InspectConfig:
    """What ``python -m pipeline.inspect_kernel`` compares (see the module docstring)."""

    kernel: str = cli_field(choices=sorted(PRESETS), help="kernel preset")
    token: str = cli_field(help="the clean token x0 (a word, or an id with --vocab-size)")
    t: float = cli_field(help="diffusion time in [0, 1]")
    samples: int = cli_field(10_000, help="number of draws of x_t (default 10000)")
    top: int = cli_field(10, help="entries to print (default 10)")
    k_max: int | None = cli_field(  # None: KernelConfig.fitted_to_table
        None, help="override the preset's k_max (default: the preset's, fitted to the stored table)")
    tokenizer: str | None = cli_field(None, help="tokenizer path (default: offline bert-base-uncased)")
    vocab_size: int | None = cli_field(None, help="synthetic vocabulary: ids, no tokenizer")
    mask_id: int | None = cli_field(None, help="[MASK] id with --vocab-size (default V - 1)")
    seed: int = cli_field(0, help="random seed of the draws")

    def __post_init__(self):
        if self.kernel not in PRESETS:
            raise ConfigError(f"unknown kernel preset {self.kernel!r}; choose from {sorted(PRESETS)}")
        if not 0.0 <= self.t <= 1.0:
            raise ConfigError(f"--t must be in [0, 1], got {self.t}")
        if self.samples < 1 or self.top < 1:
            raise ConfigError("--samples and --top must be positive")


def inspect(cfg: InspectConfig, neighbors: str | os.PathLike | None = None) -> list[str]:
    """Build the kernel, compare analytic and empirical q_t(. | token); return the lines to print."""
    tables = load_neighbor_tables(neighbors) if neighbors else None
    if cfg.vocab_size is not None:
        vocab_size, mask_id = cfg.vocab_size, (cfg.mask_id if cfg.mask_id is not None else cfg.vocab_size - 1)
        decode = str
        try:
            token_id = int(cfg.token)
        except ValueError:
            raise ConfigError(f"with --vocab-size, --token must be an integer id, got {cfg.token!r}") from None
    else:
        from pipeline.common.hf_assets import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer)
        vocab_size, mask_id = len(tok), tok.mask_token_id
        token_id = tok.convert_tokens_to_ids(cfg.token)
        if token_id is None or token_id == tok.unk_token_id and cfg.token != tok.unk_token:
            raise ConfigError(f"token {cfg.token!r} is not in the tokenizer's vocabulary (use a WordPiece, "
                              "e.g. 'king' or '##ing')")
        decode = lambda i: tok.convert_ids_to_tokens(int(i))  # noqa: E731
    if not 0 <= token_id < vocab_size:
        raise ConfigError(f"token id {token_id} outside [0, {vocab_size})")
    if tables is not None and tables.vocab_size != vocab_size:
        raise ConfigError(f"neighbour table has V={tables.vocab_size}, the vocabulary has {vocab_size}")
    kernel_cfg = KernelConfig.preset(cfg.kernel, **({"k_max": cfg.k_max} if cfg.k_max else {}))
    if tables is not None and not cfg.k_max:  # default: the preset as training builds it on this table
        kernel_cfg = kernel_cfg.fitted_to_table(tables.k_max)
    kernel = make_kernel(kernel_cfg, vocab_size, mask_id, tables)

    analytic = kernel.marginal_rows(torch.tensor([token_id]), cfg.t)[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    x0 = torch.full((1, cfg.samples), token_id)
    xt, _ = kernel.sample_xt(x0, torch.tensor([cfg.t]), generator=gen)
    empirical = torch.bincount(xt.flatten(), minlength=vocab_size).double() / cfg.samples
    tv = 0.5 * (analytic - empirical).abs().sum().item()

    alpha, beta, lam = (float(x) for x in kernel.branch_weights(cfg.t))
    lines = [f"kernel={kernel_cfg.name} token={cfg.token} (id {token_id}) t={cfg.t} samples={cfg.samples}",
             f"alpha_t={alpha:.4f} local={lam:.4f} global={beta:.4f}",
             f"{'rank':>4}  {'token':<20} {'id':>7}  {'q_t':>9}  {'empirical':>9}"]
    top = torch.argsort(analytic, descending=True)[: cfg.top]
    for rank, j in enumerate(top.tolist(), 1):
        lines.append(f"{rank:>4}  {decode(j):<20} {j:>7}  {analytic[j].item():9.5f}  {empirical[j].item():9.5f}")
    lines.append(f"tv={tv:.6f}")
    return lines


if __name__ == "__main__":  # the command is python -m pipeline.inspect_kernel; this module is its library
    raise SystemExit(library_not_a_command(__spec__.name, "pipeline.inspect_kernel"))

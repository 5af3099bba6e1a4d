"""Conditional generation: which positions are fixed (a prompt, an infill template) and which are generated.

A :class:`GenerationTemplate` holds ``n`` rows of fixed tokens and a ``free`` mask over the whole
sequence; sample i uses row i mod n. The block samplers start every block from the kernel prior at
free positions and the fixed tokens elsewhere and re-impose the fixed tokens after every update
(:meth:`pipeline.sampling.base.Denoiser.hold`), so fixed tokens never change. Tokenising text into a
template is pipeline/sampling/conditioning.py; this module needs no tokenizer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_MARK = re.compile(r"\[MASK\](\*(\d+)?)?")


@dataclass(frozen=True)
class GenerationTemplate:
    tokens: torch.Tensor  # Long[n, L]: the fixed tokens (ignored at free positions)
    free: torch.Tensor  # Bool[n, L]: True where the sampler generates
    start: int  # semi-AR blocks cover start..L-1: the first free position of any row
    kind: str = "prompt"  # "prompt" | "infill": the record field that names each row's text
    texts: tuple[str, ...] = ()  # the text of each row (for the records)

    def __post_init__(self):
        if self.tokens.shape != self.free.shape or self.tokens.dim() != 2 or self.free.dtype != torch.bool:
            raise ValueError("a template needs tokens Long[n, L] and free Bool[n, L] of one shape")
        if not bool(self.free.any(1).all()):
            raise ValueError("every template row needs at least one free position")
        if not 0 <= self.start <= int(first_free(self.free).min()):
            raise ValueError(f"start={self.start} lies after a free position")

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    @property
    def prompt_lens(self) -> torch.Tensor:
        """Long[n]: the fixed positions before each row's first free one (where an EOS search starts)."""
        return first_free(self.free)

    def text_of(self, index: int) -> str | None:
        return self.texts[index % len(self.texts)] if self.texts else None

    def for_batch(self, first_index: int, batch_size: int, device=None) -> GenerationTemplate:
        """The rows of samples first_index .. first_index + batch_size - 1 (row i mod n); ``start`` is kept,
        so a prompt is generated with the same blocks whichever prompts share its batch."""
        rows = torch.arange(first_index, first_index + batch_size) % self.tokens.shape[0]
        texts = tuple(self.text_of(int(i)) for i in rows) if self.texts else ()
        return GenerationTemplate(self.tokens[rows].to(device), self.free[rows].to(device), self.start,
                                  self.kind, texts)


def first_free(free: torch.Tensor) -> torch.Tensor:
    """Long[n]: the index of the first True of each row of ``free`` [n, L] (L when none)."""
    L = free.shape[1]
    idx = torch.arange(L, device=free.device).expand_as(free)
    return torch.where(free, idx, L).amin(1)


def all_free(batch: int, seq_len: int) -> GenerationTemplate:
    """Nothing fixed: generates exactly what no template generates (checked by the tests)."""
    return GenerationTemplate(torch.zeros(batch, seq_len, dtype=torch.long),
                              torch.ones(batch, seq_len, dtype=torch.bool), 0)


def prompt_template(prompts: list[list[int]], seq_len: int, texts: tuple[str, ...] = ()) -> GenerationTemplate:
    """Each prompt's ids fixed at the start of its row, the rest of ``seq_len`` free."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(map(len, prompts))
    if longest >= seq_len:
        raise ValueError(f"a prompt of {longest} tokens leaves nothing to generate in seq_len={seq_len}")
    tokens = torch.zeros(len(prompts), seq_len, dtype=torch.long)
    free = torch.ones(len(prompts), seq_len, dtype=torch.bool)
    for i, ids in enumerate(prompts):
        tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        free[i, :len(ids)] = False
    return GenerationTemplate(tokens, free, min(map(len, prompts)), "prompt", tuple(texts))


def parse_infill(template: str) -> list[str | int]:
    """Split ``template`` into text pieces (str) and runs of generated positions (int): ``[MASK]`` is one
    position, ``[MASK]*N`` N positions. A piece before a marker loses its trailing whitespace (the
    generated word owns the space before it, which matters to BPE tokenizers)."""
    parts: list[str | int] = []
    pos = 0
    for m in _MARK.finditer(template):
        if m.group(1) is not None and m.group(2) is None:
            raise ValueError(f"infill template: '[MASK]*' at character {m.start()} needs a count, e.g. [MASK]*5")
        count = int(m.group(2)) if m.group(2) is not None else 1
        if count < 1:
            raise ValueError(f"infill template: [MASK]*{m.group(2)} must mark at least one position")
        if template[pos:m.start()].strip():
            parts.append(template[pos:m.start()].rstrip())
        parts.append(count)
        pos = m.end()
    if not any(isinstance(p, int) for p in parts):
        raise ValueError("infill template has no [MASK] to generate")
    if template[pos:].strip():
        parts.append(template[pos:])
    return parts


def infill_template(ids: list[int], free: list[bool], text: str) -> GenerationTemplate:
    tokens = torch.tensor([ids], dtype=torch.long)
    free_t = torch.tensor([free], dtype=torch.bool)
    return GenerationTemplate(tokens, free_t, int(first_free(free_t)[0]), "infill", (text,))


def block_bounds(seq_len: int, strides: int, start: int = 0) -> list[tuple[int, int]]:
    """``strides`` consecutive blocks covering start..seq_len-1, of nearly equal lengths (the first
    ones one longer when seq_len - start is not divisible); equal blocks of seq_len / strides at start 0."""
    n = seq_len - start
    if n < strides:
        raise ValueError(f"{n} positions to generate cannot fill strides={strides} blocks")
    bounds, a = [], start
    for b in range(strides):
        size = n // strides + (b < n % strides)
        bounds.append((a, a + size))
        a += size
    return bounds


def stop_hits(x: torch.Tensor, stop_id: int, starts: torch.Tensor | int) -> torch.Tensor:
    """Bool[B, L]: positions of x holding ``stop_id`` at or after each row's start (the prompt's end)."""
    pos = torch.arange(x.shape[1], device=x.device)
    starts = torch.as_tensor(starts, device=x.device).reshape(-1, 1)
    return (x == stop_id) & (pos >= starts)


def trim_at_stop(x: torch.Tensor, stop_id: int, starts: torch.Tensor | int = 0) -> list[tuple[list[int], bool]]:
    """Each row of x cut after its first ``stop_id`` past the prompt: (ids, stopped)."""
    hits = stop_hits(x, stop_id, starts)
    out = []
    for row, hit in zip(x.tolist(), hits):
        where = torch.nonzero(hit).flatten()
        out.append((row[:int(where[0]) + 1], True) if where.numel() else (row, False))
    return out

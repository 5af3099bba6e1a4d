"""Generative perplexity of samples under a judge causal LM (docs/sampling.md, "Gen-PPL protocol").

Protocol (one, fixed):
1. each sample's ``text`` (decoded with special tokens skipped) is re-tokenised with the judge's
   tokenizer, without special tokens;
2. the judge's tokens are cut into consecutive chunks of ``context - 1`` tokens; each chunk is scored
   on its own as ``[BOS] chunk`` (BOS = the judge's bos, else cls, else eos token), so every token
   is predicted from its chunk prefix and no chunk sees another (no sliding window);
3. Gen-PPL = exp(sum of token NLLs over all samples / number of judge tokens): a token-level
   aggregate, not a mean of per-sample perplexities (those are reported separately).

Judges: any Hugging Face causal LM directory or hub id (``gpt2-large`` online), or an export of the
pipeline's autoregressive baseline (a directory whose config.json has ``kind: "ar"``).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.core.objectives import next_token_nll

DEFAULT_JUDGE = "gpt2-large"


@dataclass
class Judge:
    """What Gen-PPL needs of a causal LM."""

    name: str
    encode: Callable[[str], list[int]]  # text -> judge token ids (no special tokens)
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids [B,T], attention [B,T]) -> [B,T,V]
    context: int  # longest input the judge accepts, BOS included
    bos_id: int
    vocab_size: int
    device: str = "cpu"


def _first_id(tok, names=("bos", "cls", "eos")) -> int:
    for name in names:
        value = getattr(tok, f"{name}_token_id", None)
        if value is not None:
            return int(value)
    raise ValueError("the judge tokenizer defines no bos, cls or eos token to start a chunk with")


def _is_ar_export(path: Path) -> bool:
    cfg = path / "config.json"
    if not (path / "manifest.json").is_file() or not cfg.is_file():
        return False
    return json.loads(cfg.read_text()).get("kind") == "ar"


def load_judge(name_or_path: str, device: str = "cpu") -> Judge:
    """A Judge from an AR export of this pipeline or from a Hugging Face causal LM."""
    path = Path(name_or_path)
    if path.is_dir() and _is_ar_export(path):
        return _export_judge(path, device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path).to(device).eval()
    except (OSError, ValueError) as exc:
        hint = "" if path.exists() else " (not a local path; a hub id needs network access — offline, pass " \
                                         "an AR export of this pipeline or a local HF directory)"
        raise ValueError(f"cannot load judge {name_or_path!r}{hint}: {exc}") from None
    cfg = model.config
    context = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1024

    def logits(ids, attention):
        return model(input_ids=ids, attention_mask=attention).logits

    return Judge(str(name_or_path), lambda text: tok(text, add_special_tokens=False)["input_ids"], logits,
                 int(context), _first_id(tok), int(cfg.vocab_size), device)


def _export_judge(path: Path, device: str) -> Judge:
    from pipeline.common.export_artifact import load_export
    from pipeline.common.hf_assets import load_tokenizer

    exported = load_export(path, device=device)
    tok = load_tokenizer(exported.tokenizer_name)
    model = exported.model
    special = exported.tokenizer_info.get("special_ids", {})
    bos = special.get("cls", special.get("bos", special.get("sep")))
    if bos is None:
        bos = _first_id(tok)

    def logits(ids, attention):
        return model(ids, attention.bool())

    return Judge(str(path), lambda text: tok(text, add_special_tokens=False)["input_ids"], logits,
                 exported.model_cfg.max_seq_len, int(bos), exported.model_cfg.vocab_size, device)


def chunk_for_judge(ids: list[int], context: int, bos_id: int) -> list[list[int]]:
    """``[BOS] + ids[j : j + context - 1]`` for consecutive j (step 2 of the protocol)."""
    if context < 2:
        raise ValueError(f"judge context must be >= 2 tokens, got {context}")
    step = context - 1
    return [[bos_id] + ids[j:j + step] for j in range(0, len(ids), step)]


@torch.no_grad()
def score_chunks(judge: Judge, chunks: list[list[int]], batch_size: int = 8, progress: bool = False
                 ) -> list[float]:
    """Summed NLL (nats) of every chunk's tokens after its BOS, one float per chunk."""
    out = []
    for start in tqdm(range(0, len(chunks), batch_size), desc="judge", disable=not progress):
        batch = chunks[start:start + batch_size]
        T = max(len(c) for c in batch)
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        attention = torch.zeros(len(batch), T, dtype=torch.long)
        for i, c in enumerate(batch):  # packing a batch: loop over chunks, not tokens
            ids[i, :len(c)] = torch.tensor(c)
            attention[i, :len(c)] = 1
        if int(ids.max()) >= judge.vocab_size:
            raise ValueError(f"judge {judge.name}: token id {int(ids.max())} >= its vocabulary {judge.vocab_size}")
        ids, attention = ids.to(judge.device), attention.to(judge.device)
        out.extend(next_token_nll(judge.logits(ids, attention), ids, attention).cpu().tolist())
    return out


def generative_perplexity(texts: list[str], judge: Judge, batch_size: int = 8, progress: bool = False) -> dict:
    """Gen-PPL of ``texts`` under ``judge`` with the protocol of this module."""
    owners, chunks = [], []
    for i, text in enumerate(texts):
        for chunk in chunk_for_judge(judge.encode(text), judge.context, judge.bos_id):
            owners.append(i)
            chunks.append(chunk)
    nlls = score_chunks(judge, chunks, batch_size, progress)
    per_nll, per_tokens = [0.0] * len(texts), [0] * len(texts)
    for owner, chunk, nll in zip(owners, chunks, nlls):
        per_nll[owner] += nll
        per_tokens[owner] += len(chunk) - 1
    total_tokens = sum(per_tokens)
    total_nll = sum(per_nll)
    return {
        "judge": judge.name, "judge_context": judge.context,
        "gen_ppl": math.exp(total_nll / total_tokens) if total_tokens else math.nan,
        "nll_nats": total_nll, "judge_tokens": total_tokens,
        "empty_samples": sum(1 for n in per_tokens if n == 0),
        "per_sample_ppl": [math.exp(n / k) if k else None for n, k in zip(per_nll, per_tokens)],
    }

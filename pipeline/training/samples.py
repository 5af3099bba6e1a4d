"""Samples during training: every ``sample_every`` steps rank 0 draws ``sample_num`` sequences.

The draw uses the EMA weights (what an export would hold) and the kernel's default sampler at
``sample_steps`` steps with its default Eq 23 penalty (pipeline.sampling.stage: mdlm for mask, ctmc
otherwise), full data length. Logged: the decoded texts (TensorBoard's text plugin and one
``samples/text`` record in metrics.jsonl), mean unigram entropy, distinct-2 and the repetition rate,
and the Gen-PPL under ``judge`` when one is configured (an AR export or a HF causal LM).

The draw cannot change training: its generator is seeded by (seed, step) and the global RNG state
is restored afterwards, so a run with samples computes the same losses as one without (tested).
The AR baseline has no kernel and is not sampled here.
"""
from __future__ import annotations

import time

import torch

from pipeline.core.time_sampling import step_seed

_SAMPLE_SALT = 0x5EED_0003


class TrainingSamples:
    def __init__(self, cfg, kernel, tokenizer_name: str | None, seq_len: int, device: torch.device):
        from pipeline.sampling.stage import SamplerOptions

        self.cfg, self.kernel, self.device = cfg, kernel, device
        self.sampler = SamplerOptions().resolve(kernel.cfg.name, seq_len, cfg.sample_steps, None, None)
        from pipeline.common.hf_assets import load_tokenizer
        from pipeline.evaluation.genppl import load_judge

        # loaded now: a bad judge or tokenizer stops the run at its start, not at step sample_every
        self.tokenizer = load_tokenizer(tokenizer_name)
        self.judge = load_judge(cfg.judge, str(device)) if cfg.judge else None

    @torch.no_grad()
    def draw(self, model: torch.nn.Module, step: int) -> tuple[dict[str, float], list[str]]:
        """(scalar metrics, texts) of ``sample_num`` sequences from ``model`` (eval mode)."""
        from pipeline.evaluation.diversity import distinct_n, repetition_rate, unigram_entropy
        from pipeline.sampling import generate

        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            gen = torch.Generator(device=self.device).manual_seed(step_seed(self.cfg.seed, _SAMPLE_SALT + step))
            ids, _ = generate(model, self.kernel, self.sampler, self.cfg.sample_num, generator=gen, device=self.device)
        rows = ids.cpu().tolist()
        texts = [self.tokenizer.decode(row, skip_special_tokens=True) for row in rows]
        values = {"samples/entropy": sum(map(unigram_entropy, rows)) / len(rows),
                  "samples/distinct_2": sum(distinct_n(r, 2) for r in rows) / len(rows),
                  "samples/repetition_rate": repetition_rate(rows, self.sampler.penalty.window or 16)}
        if self.judge is not None:
            from pipeline.evaluation.genppl import generative_perplexity

            values["samples/gen_ppl"] = generative_perplexity(texts, self.judge)["gen_ppl"]
        values["samples/seconds"] = time.perf_counter() - t0
        return values, texts

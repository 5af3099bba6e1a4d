"""The ``semdlm`` model of lm-evaluation-harness (``pip install 'semdlm[eval]'``): any export of this pipeline.

* ``loglikelihood(context, continuation)``: the AR baseline's exact conditional log-probability; for a
  diffusion export minus the kernel's tightest valid bound on the continuation with the context held
  clean (``pipeline.evaluation.nelbo.evaluate_nelbo``'s ``prefix_lens``: the evaluate stage's own code),
  averaged over ``t_draws`` stratified t draws from a generator seeded with ``seed``, so a rerun gives the
  same numbers. ``is_greedy`` is exact for AR and False for diffusion (a bound names no greedy token).
* ``loglikelihood_rolling(text)``: the bound (AR: the NLL) of the whole text in disjoint windows of the
  model's length, each window on its own, as the evaluate stage scores sequences.
* ``generate_until(context, {until, max_gen_toks})``: the pipeline's sampler (the kernel's default, as
  ``pipeline.sample``) with the context as prompt, past the window when needed (``length``), stopped at the
  data's end-of-document token and cut at the first ``until`` string; AR exports decode greedily.

Texts are tokenised like the export's training rows (pipeline/sampling/conditioning.py): an lm1b-mode
export's context starts with [CLS] and a rolled text is ``[CLS] ids [SEP]``. Contexts too long for the
window lose their start (as lm-eval's HF model does).
"""
from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

MODEL_NAME = "semdlm"


@register_model(MODEL_NAME)
class SemdlmLM(LM):
    def __init__(self, model_dir: str, t_draws: int = 16, seed: int = 0, batch_size: int | str = 16,
                 device: str | None = "cpu", steps: int = 64, max_gen_toks: int = 64, **_ignored):
        """``batch_size`` and ``device`` come from lm-eval's --batch_size / --device ("auto": 16 sequences)."""
        super().__init__()
        device = device or "cpu"
        batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        from pipeline.common.export_artifact import load_export
        from pipeline.common.export_contents import data_seq_len
        from pipeline.sampling.conditioning import stop_token_id, text_codec

        self.exported = load_export(model_dir, device=device)
        self.t_draws, self.seed, self.batch, self.steps = int(t_draws), int(seed), int(batch_size), int(steps)
        self.max_gen_toks, self.device_name = int(max_gen_toks), device
        self.codec = text_codec(self.exported.config, self.exported.tokenizer_info, self.exported.tokenizer_name)
        self.head, self.tail = list(self.codec.head), list(self.codec.tail)
        self.pad_id = self.codec.special_ids.get("pad", self.codec.tokenizer_ids.get("pad"))
        self.stop_id = stop_token_id(self.exported.config, self.exported.tokenizer_info)
        self.window = min(data_seq_len(self.exported.config) or self.exported.model_cfg.max_seq_len,
                          self.exported.model_cfg.max_seq_len)
        self.autoregressive = self.exported.kind == "ar"

    # ------------------------------------------------------------------ helpers
    def _encode(self, text: str) -> list[int]:
        return self.codec.encode(text)

    def _bounds(self, rows: list[list[int]], prefixes: list[int]) -> list[float]:
        """Nats of each row past its prefix (the tightest bound; AR: exact), rows padded to the window."""
        from pipeline.evaluation.nelbo import evaluate_nelbo

        x = torch.full((len(rows), self.window), self.pad_id if self.pad_id is not None else 0, dtype=torch.long)
        for i, row in enumerate(rows):
            x[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        result = evaluate_nelbo(self.exported, x, self.pad_id, batch_size=self.batch, t_draws=self.t_draws,
                                seed=self.seed, progress=False, prefix_lens=torch.tensor(prefixes),
                                desc="lm-eval")
        return [float(v) for v in result["per_sequence"][0]]

    def _greedy(self, rows: list[list[int]], prefixes: list[int]) -> list[bool]:
        """AR: whether every continuation token is the model's argmax after the tokens before it."""
        out = []
        model = self.exported.model
        for row, p in zip(rows, prefixes):
            x = torch.tensor([row], dtype=torch.long, device=next(model.parameters()).device)
            with torch.no_grad():
                logits = model(x, torch.ones_like(x, dtype=torch.bool))
            out.append(bool((logits[0, p - 1:len(row) - 1].argmax(-1) == x[0, p:]).all()))
        return out

    # ------------------------------------------------------------------ the harness's three calls
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        rows, prefixes = [], []
        for req in requests:
            context, continuation = req.args
            ctx, cont = self.head + self._encode(context), self._encode(continuation)
            ids = (ctx + cont)[-self.window:]
            rows.append(ids)
            prefixes.append(max(len(ids) - len(cont), 1 if self.autoregressive else 0))
        nats = self._bounds(rows, prefixes)
        greedy = self._greedy(rows, prefixes) if self.autoregressive else [False] * len(rows)
        return [(-n, g) for n, g in zip(nats, greedy)]

    def loglikelihood_rolling(self, requests) -> list[float]:
        rows, owner = [], []
        for k, req in enumerate(requests):
            ids = self.head + self._encode(req.args[0]) + self.tail
            for start in range(0, len(ids), self.window):
                rows.append(ids[start:start + self.window])
                owner.append(k)
        nats = self._bounds(rows, [0] * len(rows))
        totals = [0.0] * len(requests)
        for k, n in zip(owner, nats):
            totals[k] -= n
        return totals

    def generate_until(self, requests) -> list[str]:
        return [self._generate(*req.args) for req in tqdm(requests, desc="lm-eval generate", disable=True)]

    def _generate(self, context: str, gen_kwargs: dict) -> str:
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        new = self._new_tokens(context, int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)))
        text = self.codec.backend.decode(new, skip_special_tokens=True)
        for stop in until:
            if stop and stop in text:
                text = text[:text.index(stop)]
        return text

    def _new_tokens(self, context: str, max_new: int) -> list[int]:
        """At most ``max_new`` tokens after the context, up to (without) the data's end-of-document token."""
        prompt = (self.head + self._encode(context))[-max(self.window - 1, 1):]
        new = self._ar_continue(prompt, max_new) if self.autoregressive else self._diffusion_continue(prompt, max_new)
        return new[:new.index(self.stop_id)] if self.stop_id is not None and self.stop_id in new else new

    def _ar_continue(self, prompt: list[int], max_new: int) -> list[int]:
        model = self.exported.model
        device = next(model.parameters()).device
        x = torch.tensor([prompt], dtype=torch.long, device=device)
        for _ in range(max_new):
            window = x[:, -self.window:]
            with torch.no_grad():
                token = model(window, torch.ones_like(window, dtype=torch.bool))[0, -1].argmax()
            x = torch.cat([x, token.view(1, 1)], dim=1)
            if self.stop_id is not None and int(token) == self.stop_id:
                break
        return x[0, len(prompt):].tolist()

    def _diffusion_continue(self, prompt: list[int], max_new: int) -> list[int]:
        from pipeline.sampling import generate
        from pipeline.sampling.stage import SamplerOptions, export_association
        from pipeline.sampling.template import prompt_template

        total = len(prompt) + max_new
        seq_len = self.window
        options = SamplerOptions(length=total if total > seq_len else None)
        cfg = options.resolve(self.exported.kernel.cfg.name, seq_len, self.steps, None, None)
        association = export_association(self.exported, self.device_name) if cfg.penalty.lambda_sem > 0 else None
        gen = torch.Generator(device=self.exported.kernel.device).manual_seed(self.seed)
        ids, _ = generate(self.exported.model, self.exported.kernel, cfg, 1, gen, association,
                          template=prompt_template([prompt], seq_len), stop_id=self.stop_id)
        return ids[0, len(prompt):total].tolist()

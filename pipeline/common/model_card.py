"""The model card (README.md) of an export: kernel and schedule, data, training, test bounds, usage.

:func:`read_evaluation` reads an evaluation artifact (``python -m pipeline.evaluate``) for the card's
bounds, with the sha256 of the weights it evaluated so the exporter can refuse an evaluation of other
weights; :func:`render_card` writes the card from the export's config.json fields.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.common.artifacts import ArtifactError, load_manifest, manifest_hash


@dataclass
class EvaluationSummary:
    directory: Path
    manifest_sha256: str
    results: dict                 # results.json of the evaluation
    weights_digest: str | None    # tensors_digest of the weights it evaluated; None when unverifiable
    model_dir: str | None         # the export it evaluated


def tensors_digest(path) -> str:
    """sha256 over a safetensors file's tensors (name, dtype, shape, bytes) in name order.

    The file's own sha256 will not do: safetensors writes its metadata map in no fixed order, so two
    exports of the same checkpoint differ in their header bytes.
    """
    import hashlib

    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as fh:
        for name in sorted(fh.keys()):
            tensor = fh.get_tensor(name).contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def read_evaluation(eval_dir) -> EvaluationSummary:
    """An evaluation artifact's results and the digest of the weights it evaluated.

    The evaluation pins its export by manifest hash: the weights are known only while that export
    still holds the pinned manifest (and so the same model.safetensors).
    """
    eval_dir = Path(eval_dir)
    manifest = load_manifest(eval_dir, stage="evaluate")
    try:
        results = json.loads((eval_dir / "results.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{str(eval_dir)!r}: results.json is unreadable: {exc}") from None
    pinned = (manifest.get("upstream") or {}).get("model") or {}
    weights = None
    model_dir = pinned.get("path")
    if model_dir:
        try:
            if manifest_hash(model_dir) == pinned.get("manifest_sha256"):
                load_manifest(model_dir, stage="export")
                weights = tensors_digest(Path(model_dir) / "model.safetensors")
        except (OSError, ArtifactError):
            weights = None
    return EvaluationSummary(eval_dir.resolve(), manifest_hash(eval_dir), results, weights, model_dir)


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _data_lines(artifacts: dict) -> list[str]:
    lines = []
    pre = artifacts.get("preprocessed")
    if not pre:
        return ["- preprocessed data: not recorded"]
    lines.append(f"- preprocessed data: `{pre}` (manifest sha256 `{artifacts.get('preprocessed_manifest_sha256')}`)")
    try:  # the upstream may live on another machine: the path and hash above still identify it
        manifest = load_manifest(pre, check_files=False)
    except ArtifactError:
        return lines
    cfg = manifest.get("config") or {}
    if cfg.get("mode"):
        lines.append(f"- mode `{cfg['mode']}`, sequence length {manifest.get('seq_len', cfg.get('seq_len'))}"
                     + (", sentences packed" if cfg.get("wrap") else ""))
    for split, specs in (cfg.get("inputs") or {}).items():
        lines.append(f"- {split} inputs: " + ", ".join(f"`{s}`" for s in specs))
    for split, stats in (manifest.get("stats") or {}).items():
        if isinstance(stats, dict) and "tokens" in stats:
            lines.append(f"- {split}: {_fmt(stats.get('sequences'))} sequences, {_fmt(stats['tokens'])} tokens")
    return lines


def _bound_rows(results: dict) -> list[str]:
    rows = []
    entries = []
    if results.get("nelbo"):
        entries.append(("test split", results["nelbo"]))
    entries += list((results.get("eval_sets") or {}).items())
    for name, r in entries:
        rows.append(f"| {name} | {r.get('bound')} | {_fmt(r.get('sequences'))} | {_fmt(r.get('tokens'))} "
                    f"| {_fmt(r.get('nats_per_token'))} | {_fmt(r.get('stderr'))} "
                    f"| {_fmt(r.get('bits_per_token'))} | {_fmt(r.get('perplexity'), 2)} |")
    return rows


def _evaluation_lines(evaluation: EvaluationSummary | None, kind: str) -> list[str]:
    if evaluation is None:
        return ["Not evaluated."]
    rows = _bound_rows(evaluation.results)
    lines = [f"From the evaluation artifact `{evaluation.directory}` (manifest sha256 "
             f"`{evaluation.manifest_sha256}`; full report: its report.md) of these weights."]
    if not rows:
        return lines + ["", "It holds no likelihood bound (run without NELBO)."]
    what = "exact next-token NLL" if kind == "ar" else "upper bounds on the NLL (the tightest valid bound)"
    return lines + ["", f"Nats per token are {what}; PPL = exp(nats/token); ± is the standard error over the "
                    "t draws.", "",
                    "| set | bound | sequences | tokens | nats/token | ± stderr | bits/token | PPL (≤) |",
                    "|---|---|---|---|---|---|---|---|", *rows]


def _schedule_table(kernel: dict) -> list[str]:
    """alpha_t (self-retention) and beta_t (global branch) on a few t: the schedule at a glance."""
    from pipeline.core.kernel_config import KernelConfig, alpha_of, beta_of

    cfg = KernelConfig(**kernel)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    alpha, beta = alpha_of(cfg, t).tolist(), beta_of(cfg, t).tolist()
    return ["| t | " + " | ".join(f"{v:g}" for v in t.tolist()) + " |", "|---" * (len(t) + 1) + "|",
            "| alpha_t | " + " | ".join(f"{v:.4f}" for v in alpha) + " |",
            "| beta_t | " + " | ".join(f"{v:.4f}" for v in beta) + " |"]


def _usage(kind: str, config: dict | None = None) -> list[str]:
    if kind == "ar":
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                "",
                'model = AutoModelForCausalLM.from_pretrained("EXPORT_DIR", trust_remote_code=True)',
                'tok = AutoTokenizer.from_pretrained("EXPORT_DIR")',
                'ids = tok("the cat sat", return_tensors="pt").input_ids',
                "logits = model(ids).logits  # logits[:, i] predict token i + 1",
                "out = model.generate(ids, max_new_tokens=16, do_sample=True)"]
    else:
        code = ["import torch",
                "from transformers import AutoModelForMaskedLM, AutoTokenizer",
                "",
                'model = AutoModelForMaskedLM.from_pretrained("EXPORT_DIR", trust_remote_code=True)',
                'tok = AutoTokenizer.from_pretrained("EXPORT_DIR")',
                'ids = tok("the cat [MASK] on the mat", return_tensors="pt").input_ids',
                "logits = model(ids, timesteps=torch.tensor([0.5])).logits  # x_t at time t -> logits over x_0"]
    lines = ["```python", *code, "```"]
    posterior = (config or {}).get("posterior") or {}
    if kind == "diffusion" and posterior.get("kernel_aware"):
        lines += ["", "These logits are clean-token scores f_θ, not the posterior: the pipeline reads "
                  "p_θ(v | x_t) ∝ softmax(f)_v · q_t(x_t | v), plus log(λ_chg / λ_same) = "
                  f"{float(posterior.get('log_ratio', 0.0)):.4g} at v = x_t, with f = 0 off the clean support "
                  "(config.json `posterior`; docs/likelihood.md §7 of the pipeline)."]
    if kind == "diffusion":
        lines += ["", "Sampling and evaluation with the pipeline (kernel and neighbour tables from config.json):", "",
                  "```bash", "python -m pipeline.sample --model EXPORT_DIR --out samples/run --steps 128",
                  "python -m pipeline.evaluate --model EXPORT_DIR --out eval/run", "```"]
    return lines


def render_card(config: dict, evaluation: EvaluationSummary | None = None, has_tokenizer: bool = True) -> str:
    """README.md of an export from its config.json fields."""
    kind, model, kernel = config["kind"], config["model"], config.get("kernel")
    training, tok = config.get("training") or {}, config.get("tokenizer") or {}
    artifacts = config.get("artifacts") or {}
    from pipeline.core.model import ModelConfig, parameter_count_formula

    model_cfg = ModelConfig(**model)
    params = parameter_count_formula(model_cfg)
    title = (f"SemDLM diffusion LM, kernel `{kernel['name']}`" if kind == "diffusion"
             else "SemDLM autoregressive baseline")
    tags = ["semdlm", "diffusion-language-model" if kind == "diffusion" else "autoregressive-baseline"]
    task = "fill-mask" if kind == "diffusion" else "text-generation"
    lines = ["---", "library_name: transformers", f"pipeline_tag: {task}",
             "tags:", *[f"- {t}" for t in tags], "---", "", f"# {title}", "",
             "Exported by the semdlm pipeline (`python -m pipeline.export`). The directory is both the pipeline's "
             "export artifact (manifest.json) and a transformers model (remote code: `trust_remote_code=True`).", "",
             "## Model", "",
             f"- kind: `{kind}`; {model['n_layer']} layers, d_model {model['d_model']}, {model['n_head']} heads, "
             f"vocabulary {model['vocab_size']:,}, max sequence length {model['max_seq_len']}",
             f"- parameters: {params['total']:,} ({params['non_embedding']:,} non-embedding)",
             f"- adaLN {model['adaln']}, time-conditioned {model_cfg.conditioned}, "
             f"tied embeddings {model['tie_embeddings']}, causal {model['causal']}"]
    if kernel is not None:
        lines += ["", "## Kernel and schedule", "",
                  "The forward process the model was trained under; the pipeline's samplers and likelihood "
                  "bounds rebuild it from config.json `kernel` (fields that do not apply to this kernel keep "
                  "their defaults).", "",
                  "| field | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in kernel.items()],
                  "", *_schedule_table(kernel)]
    lines += ["", "## Data", "", *_data_lines(artifacts)]
    if artifacts.get("neighbors"):
        carried = (config.get("neighbor_tables") or {}).get("dir")
        lines.append(f"- neighbour tables: `{artifacts['neighbors']}` (manifest sha256 "
                     f"`{artifacts.get('neighbors_manifest_sha256')}`)"
                     + (f"; a copy is in `{carried}/` (sha256s in config.json `neighbor_tables`)" if carried else ""))
    lines.append(f"- tokenizer: `{tok.get('name_or_path')}`, {tok.get('vocab_size')} tokens, `{tok.get('identity')}`"
                 + ("" if has_tokenizer else " (tokenizer files not included in this export)"))
    lines += ["", "## Training", ""]
    if training:
        tokens = training.get("tokens_seen")
        lines.append(f"- {_fmt(training.get('step'))} steps, {_fmt(tokens) if tokens is not None else 'n/a'} "
                     f"tokens seen; {training.get('weights', 'n/a')} weights of checkpoint `{training.get('tag')}`")
        lines.append(f"- run directory: `{training.get('run_dir')}`")
    else:
        lines.append("- not exported from a training run")
    lines += ["", "## Evaluation", "", *_evaluation_lines(evaluation, kind), "", "## Usage", "", *_usage(kind, config)]
    return "\n".join(lines) + "\n"

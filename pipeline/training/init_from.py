"""``init_from``: start a new run from existing weights (fine-tuning, continued training).

``init_from: PATH`` (or ``init_from=PATH`` on the command line) names an export (``python -m
pipeline.export``) or a run directory (its newest complete checkpoint, EMA weights unless
``init_from_weights: raw``). Only the weights are taken: the optimizer starts fresh, the step at 0,
the data at the start of the epoch. The kernel may differ (continue a mask model under semdlm_plus:
the network does not depend on the corruption process); the tokenizer and every field that shapes
the weights may not, and a mismatch is refused with the field named. Fields that do not shape the
weights (dropout, max_seq_len, rope_base, time_scale, fp32_head, time_conditioning) follow the new
run's config. A run that already holds a checkpoint resumes from it and ignores ``init_from``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.common.artifacts import ConfigError, load_manifest
from pipeline.core.model import ModelConfig

# ModelConfig fields that decide the parameters' names and shapes, or what the network computes
# (causal: a causal model's weights are no diffusion denoiser)
ARCHITECTURE_FIELDS = ("vocab_size", "n_layer", "n_head", "d_model", "cond_dim", "mlp_ratio", "adaln",
                       "tie_embeddings", "causal", "freq_embed_dim")
WEIGHTS = ("ema", "raw")


@dataclass
class InitWeights:
    state_dict: dict[str, torch.Tensor]
    source: str        # one line for the log and train_config.json


def read_source(path: str | Path, weights: str = "ema") -> tuple[dict, dict, dict, str]:
    """(model config dict, tokenizer info, state dict, description) of an export or a run directory."""
    from safetensors.torch import load_file

    from pipeline.training.checkpoint import checkpoint_dir, read_checkpoint_for_export

    path = Path(path)
    if weights not in WEIGHTS:
        raise ConfigError(f"init_from_weights must be one of {WEIGHTS}, got {weights!r}")
    if (path / "manifest.json").is_file():
        load_manifest(path, stage="export")
        config = json.loads((path / "config.json").read_text())
        state = load_file(str(path / "model.safetensors"))
        step = (config.get("training") or {}).get("step")
        return config["model"], config["tokenizer"], state, f"export {path} (step {step})"
    if checkpoint_dir(path).is_dir():
        ckpt = read_checkpoint_for_export(path, use_ema=weights == "ema")
        return (ckpt.model_cfg.to_dict(), ckpt.tokenizer_info, ckpt.weights,
                f"run {path} ({ckpt.training['tag']}, {weights} weights)")
    raise FileNotFoundError(f"init_from {str(path)!r} is neither an export (python -m pipeline.export) nor a run "
                            "directory with a checkpoint")


def load_init_weights(path: str | Path, model_cfg: ModelConfig, tokenizer_identity: str,
                      weights: str = "ema") -> InitWeights:
    """The weights of ``path`` checked against this run's model config and tokenizer."""
    model, tokenizer, state, source = read_source(path, weights)
    if tokenizer.get("identity") != tokenizer_identity:
        raise ConfigError(f"init_from {path}: its tokenizer ({tokenizer.get('identity')}) is not this run's data's "
                          f"({tokenizer_identity}); the vocabularies differ")
    ours = model_cfg.to_dict()
    diffs = [f"{k}: {model.get(k)!r} there, {ours[k]!r} here" for k in ARCHITECTURE_FIELDS if model.get(k) != ours[k]]
    if diffs:
        raise ConfigError(f"init_from {path}: the model differs ({'; '.join(diffs)}); set model / model_args to "
                          "the source's architecture")
    return InitWeights(state, source)


def apply_init_weights(model: torch.nn.Module, init: InitWeights) -> None:
    """Copy ``init`` into ``model``: every parameter, same names and shapes, nothing left over."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(init.state_dict))
    unexpected = sorted(set(init.state_dict) - set(expected))
    wrong = [k for k in expected if k in init.state_dict and init.state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        first = (f": {wrong[0]} has shape {list(init.state_dict[wrong[0]].shape)}, the model "
                 f"{list(expected[wrong[0]].shape)}" if wrong else "")
        raise ConfigError(f"init_from {init.source}: weights do not fit the model ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected, {len(wrong)} of another shape{first})")
    with torch.no_grad():
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in init.state_dict.items()}, strict=True)

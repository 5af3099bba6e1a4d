"""The Hugging Face side of an export: what makes an export directory a transformers model too.

An export directory is both the pipeline's artifact (manifest.json; ``load_export`` reads it) and a
transformers model directory, loadable with ``AutoModelForMaskedLM`` (diffusion) or
``AutoModelForCausalLM`` (the AR baseline) and ``trust_remote_code=True``:

* ``config.json``: the pipeline's fields (kind, model, kernel, tokenizer, artifacts, training, data,
  neighbor_tables) at the top level, as before, plus :func:`hf_config_fields` (model_type, architectures,
  auto_map, the usual HF names); transformers ignores ``neighbors/`` (the pipeline's copy of the tables);
* ``model.safetensors``: written once by ``save_export`` with the pipeline's own keys; the remote code's
  ``base_model_prefix`` makes them load into the HF wrapper as they are;
* the remote code, self-contained (imports torch and transformers only): ``configuration_semdlm.py`` and
  ``modeling_semdlm.py`` (templates in pipeline/common/hf_remote) and ``semdlm_model.py``, a verbatim copy
  of pipeline/core/model.py, so both loaders run the same network code;
* the tokenizer files (tokenizer.json with truncation and padding off), when the exporter passes one;
* ``README.md``: the model card (:mod:`pipeline.common.model_card`).

:func:`push_to_hub` uploads an export (online only; offline it is one clear error).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.common.artifacts import ArtifactError, StageError, tokenizer_identity
from pipeline.common.model_card import EvaluationSummary, render_card, tensors_digest

MODEL_TYPE = "semdlm"
REMOTE_CODE_DIR = Path(__file__).with_name("hf_remote")
REMOTE_CODE_FILES = ("configuration_semdlm.py", "modeling_semdlm.py")
MODEL_SOURCE_NAME = "semdlm_model.py"  # the copy of pipeline/core/model.py that modeling_semdlm.py imports
# kind -> (the remote-code class, the transformers auto class that loads it)
CLASSES = {"diffusion": ("SemDLMForMaskedLM", "AutoModelForMaskedLM"),
           "ar": ("SemDLMForCausalLM", "AutoModelForCausalLM")}
# Init kwargs transformers copies from tokenizer.json's truncation/padding; a saved config would repeat them.
_TOKENIZER_RUNTIME_KWARGS = ("max_length", "stride", "truncation_strategy", "pad_to_multiple_of")


class TokenizerMismatchError(StageError, ValueError):
    """The tokenizer to ship with an export cannot be loaded or is not the one the model was trained with."""


class EvaluationMismatchError(ArtifactError):
    """--eval names an evaluation of other weights (or of an export that has changed since)."""


class HubError(StageError, RuntimeError):
    """Pushing to the Hugging Face Hub is impossible (offline) or failed."""


def hf_config_fields(kind: str, model: dict, tokenizer_info: dict) -> dict:
    """The keys config.json needs for transformers, next to the pipeline's own."""
    cls, auto = CLASSES[kind]
    fields = {"model_type": MODEL_TYPE, "architectures": [cls],
              "auto_map": {"AutoConfig": "configuration_semdlm.SemDLMConfig", auto: f"modeling_semdlm.{cls}"},
              "tie_word_embeddings": False,  # a tied head reads the embedding itself: nothing for HF to tie
              "vocab_size": model["vocab_size"], "hidden_size": model["d_model"], "num_hidden_layers": model["n_layer"],
              "num_attention_heads": model["n_head"], "max_position_embeddings": model["max_seq_len"]}
    special = tokenizer_info.get("special_ids") or {}
    for name in ("pad", "mask"):
        if special.get(name) is not None:
            fields[f"{name}_token_id"] = special[name]
    return fields


def load_export_tokenizer(tokenizer_info: dict, name_or_path: str | None = None, max_seq_len: int | None = None):
    """The tokenizer the model was trained with, ready to save into its export.

    ``name_or_path`` (default: the recorded one) must have the recorded vocabulary identity. Truncation and
    padding are switched off (the offline default's tokenizer.json ships both on, at 128 tokens).
    """
    from pipeline.common.hf_assets import load_tokenizer

    name = name_or_path or tokenizer_info.get("name_or_path")
    hint = "pass the training tokenizer's path with --tokenizer"
    try:
        tok = load_tokenizer(name)
    except ValueError as exc:
        raise TokenizerMismatchError(f"{exc}; {hint}") from None
    identity = tokenizer_identity(tok.get_vocab())
    if tokenizer_info.get("identity") and identity != tokenizer_info["identity"]:
        raise TokenizerMismatchError(f"tokenizer {name!r} has vocabulary {identity}, but the model was trained with "
                                     f"{tokenizer_info['identity']}; {hint}")
    tok.backend_tokenizer.no_truncation()
    tok.backend_tokenizer.no_padding()
    for key in _TOKENIZER_RUNTIME_KWARGS:
        tok.init_kwargs.pop(key, None)
    if max_seq_len is not None:
        tok.model_max_length = max_seq_len
    return tok


def write_hf_files(directory: Path, config: dict, tokenizer=None, evaluation: EvaluationSummary | None = None) -> None:
    """Remote code, tokenizer files and model card into ``directory`` (model.safetensors already written)."""
    import pipeline.core.model as model_source

    directory = Path(directory)
    if evaluation is not None:
        if evaluation.weights_digest != tensors_digest(directory / "model.safetensors"):
            why = ("it evaluated other weights" if evaluation.weights_digest is not None else
                   f"the export it evaluated ({evaluation.model_dir}) is gone or has changed since, so its "
                   "weights cannot be compared")
            raise EvaluationMismatchError(f"--eval {evaluation.directory}: not an evaluation of these weights: {why}; "
                                          "evaluate this export and pass that evaluation")
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(REMOTE_CODE_DIR / name, directory / name)
    shutil.copyfile(model_source.__file__, directory / MODEL_SOURCE_NAME)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    (directory / "README.md").write_text(render_card(config, evaluation, has_tokenizer=tokenizer is not None))


# --------------------------------------------------------------------------- the Hub
def hub_offline() -> bool:
    """Offline mode as huggingface_hub and transformers read it (set in the environment)."""
    return any(os.environ.get(flag, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_hub_online(repo: str) -> None:
    if hub_offline():
        raise HubError(f"--push-to-hub {repo} needs network access, but offline mode is set (HF_HUB_OFFLINE or "
                       "TRANSFORMERS_OFFLINE): unset it, or export without --push-to-hub and upload the "
                       f"directory later (hf upload {repo} EXPORT_DIR)")


def push_to_hub(directory, repo: str, private: bool = False) -> str:
    """Upload an export directory (manifest, weights, remote code, tokenizer, card) to the model repo ``repo``."""
    check_hub_online(repo)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(directory), repo_id=repo, repo_type="model",
                          commit_message="Upload a semdlm export")
    except (OSError, ValueError) as exc:  # network, authentication, HTTP errors (requests' are OSErrors)
        raise HubError(f"pushing {directory} to {repo} failed ({type(exc).__name__}: {exc}); the export itself is "
                       f"complete: retry with hf upload {repo} {directory}") from None
    return str(url)

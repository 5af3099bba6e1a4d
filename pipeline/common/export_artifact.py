"""The export artifact: a trained model for sampling and evaluation, without DeepSpeed.

An export is an artifact (stage "export") holding

* ``config.json``: ``kind`` ("diffusion" | "ar"), ``model`` (ModelConfig.to_dict()), ``kernel``
  (KernelConfig.to_dict() or null), ``tokenizer`` (identity + special ids, ``shipped``), ``artifacts``
  (absolute paths of the preprocessed data and of the neighbour tables, with their manifest hashes:
  provenance), ``data`` (seq_len, packing mode, ...) and ``neighbor_tables`` (the copied tables' sha256s),
  see :mod:`pipeline.common.export_contents`, and, when exported from a run, ``training`` (step, tokens
  seen, run directory);
* ``model.safetensors``: the weights (the EMA weights when exported from a run);
* ``neighbors/*.npy``: a copy of the neighbour tables, when the run had any: the export needs nothing else;
* the Hugging Face side (:mod:`pipeline.common.hf_export`): config.json's HF keys, remote code, tokenizer
  files and README.md, so transformers loads the same directory (``trust_remote_code=True``).

:func:`save_export` writes one (``pipeline.training.export.export_run`` from a run's checkpoint),
:func:`load_export` reads it back with its kernel, built by the same factory as in training, after checking
the names and shapes of model.safetensors against the model config.json describes (:func:`check_weights_match`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pipeline.common.artifacts import ArtifactError, StageError, StageRun, load_manifest, manifest_hash
from pipeline.common.export_contents import copy_tables, data_record, export_tables, tables_record, tokenizer_source
from pipeline.common.hf_export import hf_config_fields, write_hf_files
from pipeline.common.model_card import EvaluationSummary
from pipeline.common.neighbor_artifact import NeighborTables
from pipeline.core.kernels import Kernel, KernelConfig, make_kernel
from pipeline.core.model import ModelConfig, build_model
from pipeline.core.posterior import Reading, reading_from_record

STAGE = "export"
KINDS = ("diffusion", "ar")


class ExportExistsError(StageError, FileExistsError):
    """The export directory exists and overwriting it was not asked for (--force)."""


@dataclass
class Exported:
    model: torch.nn.Module          # eval mode, on the requested device
    model_cfg: ModelConfig
    kind: str
    kernel: Kernel | None           # None for the autoregressive baseline
    tokenizer_info: dict
    config: dict                    # config.json as written
    mask_id: int | None
    reading: Reading | None = None  # how the output is read as p_theta(x0 | x_t); also model.posterior_reading
    tables: NeighborTables | None = None  # the neighbour tables the kernel was built with, read once
    tokenizer_name: str | None = None  # what loads the tokenizer: the export itself when it ships the files


def save_export(out_dir, model: torch.nn.Module, model_cfg: ModelConfig, kernel_cfg: KernelConfig | None,
                tokenizer_info: dict, artifacts: dict, kind: str, force: bool = False,
                training: dict | None = None, state_dict: dict | None = None, break_lock: bool = False,
                hf_tokenizer=None, evaluation: EvaluationSummary | None = None, posterior: dict | None = None) -> Path:
    """Write an export artifact; ``state_dict`` (e.g. EMA weights) replaces ``model.state_dict()``.

    ``hf_tokenizer`` (see ``hf_export.load_export_tokenizer``) is saved into the export; ``evaluation``
    (``model_card.read_evaluation``, an evaluation of these same weights) puts its bounds on the model card.
    An existing ``out_dir`` is refused unless ``force``: in-memory weights have no freshness key.
    """
    run = export_stage(out_dir, model_cfg, kernel_cfg, tokenizer_info, artifacts, kind, training=training,
                       evaluation=evaluation, force=True, break_lock=break_lock, posterior=posterior,
                       ships_tokenizer=hf_tokenizer is not None)
    if not force and Path(out_dir).exists():
        raise ExportExistsError(f"{out_dir} exists; pass force=True (--force) to overwrite it")
    return write_export(run, model.state_dict() if state_dict is None else state_dict, hf_tokenizer, evaluation)


def export_stage(out_dir, model_cfg: ModelConfig, kernel_cfg: KernelConfig | None, tokenizer_info: dict,
                 artifacts: dict, kind: str, training: dict | None = None,
                 evaluation: EvaluationSummary | None = None, sources=(), force: bool = False,
                 break_lock: bool = False, posterior: dict | None = None, ships_tokenizer: bool = True) -> StageRun:
    """The export's StageRun; its ``config`` is config.json. ``sources``, the files the weights are read from
    (a checkpoint's model states), enter the freshness key with the config and the upstream artifacts: an
    export of unchanged sources is up to date (``run.is_up_to_date()``). ``ships_tokenizer``: the writer
    saves the tokenizer files into the export."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "diffusion" and kernel_cfg is None:
        raise ValueError("a diffusion export needs its kernel config")
    upstream = {name: Path(artifacts[name]) for name in ("preprocessed", "neighbors") if artifacts.get(name)}
    refs = {}
    for name in ("preprocessed", "neighbors"):
        path = artifacts.get(name)
        refs[name] = str(Path(path).resolve()) if path else None
        refs[f"{name}_manifest_sha256"] = manifest_hash(path) if path else None
    config = {"kind": kind, "model": model_cfg.to_dict(),
              "kernel": kernel_cfg.to_dict() if kernel_cfg is not None else None,
              "tokenizer": {**tokenizer_info, "shipped": ships_tokenizer}, "artifacts": refs,
              "training": training or {}, "data": data_record(artifacts.get("preprocessed")),
              "neighbor_tables": tables_record(artifacts.get("neighbors"))}
    if posterior is not None:  # absent: an export read as before the record (pipeline.core.posterior.LEGACY)
        config["posterior"] = posterior
    config.update(hf_config_fields(kind, config["model"], tokenizer_info))  # our readers ignore these keys
    if evaluation is not None:
        upstream["evaluation"] = evaluation.directory
    return StageRun(STAGE, Path(out_dir), config=config, inputs=[Path(p) for p in sources], upstream=upstream,
                    tokenizer=tokenizer_info, force=force, break_lock=break_lock)


def write_export(run: StageRun, weights: dict, hf_tokenizer=None, evaluation: EvaluationSummary | None = None) -> Path:
    """Write ``run``'s export (``export_stage``): config.json, the weights as safetensors, the transformers side."""
    kind = run.config["kind"]
    # safetensors wants contiguous, unshared CPU tensors; non-persistent buffers are not in state_dict.
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    tables = run.config.get("neighbor_tables")
    with run as tmp:
        (tmp / "config.json").write_text(json.dumps(run.config, indent=2, sort_keys=True) + "\n")
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt", "kind": kind})
        if tables:
            copy_tables(tables, run.config["artifacts"]["neighbors"], tmp)
        write_hf_files(tmp, run.config, hf_tokenizer, evaluation)
    return run.out_dir


def read_export_config(directory: Path) -> tuple[dict, ModelConfig]:
    """config.json and its ModelConfig; ArtifactError naming the file when either is unusable."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text())
        return config, ModelConfig(**config["model"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} is not a usable export config ({type(exc).__name__}: {exc}); "
                            "re-export the run (python -m pipeline.export RUN_DIR --out DIR --force)") from exc


def check_weights_match(directory: Path, model: torch.nn.Module) -> None:
    """Names and shapes of model.safetensors against ``model`` (built from config.json), read from the file's
    header without loading a tensor; one ArtifactError naming the file instead of torch's many-line one."""
    path = Path(directory) / "model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as fh:
            found = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a readable safetensors file ({exc})") from exc
    wanted = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(wanted) - set(found))
    unexpected = sorted(set(found) - set(wanted))
    reshaped = [n for n in wanted if n in found and found[n] != wanted[n]]
    if not (missing or unexpected or reshaped):
        return
    first = (f"{reshaped[0]} is {list(found[reshaped[0]])} in the file, {list(wanted[reshaped[0]])} in the model"
             if reshaped else f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
    raise ArtifactError(f"{path} does not match {path.parent / 'config.json'}: {len(missing)} tensors missing, "
                        f"{len(unexpected)} unexpected, {len(reshaped)} of another shape (first: {first}); "
                        "re-export the run (python -m pipeline.export RUN_DIR --out DIR --force)")


def load_export(directory, device: torch.device | str = "cpu") -> Exported:
    """Load an export: model in eval mode, kernel with its neighbour tables (None for AR), each read once."""
    directory = Path(directory)
    load_manifest(directory, stage=STAGE)
    config, model_cfg = read_export_config(directory)
    kind = config["kind"]
    model = build_model(model_cfg)
    check_weights_match(directory, model)
    state = load_file(str(directory / "model.safetensors"), device="cpu")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    tokenizer_info = config["tokenizer"]
    tokenizer_name = tokenizer_source(directory, config)
    mask_id = tokenizer_info.get("special_ids", {}).get("mask")
    kernel = None
    if kind == "diffusion":
        kernel_cfg = KernelConfig(**config["kernel"])
        tables = export_tables(directory, config)
        if tables is None and kernel_cfg.needs_neighbors:
            raise ValueError(f"{directory}: kernel {kernel_cfg.name!r} needs neighbour tables, "
                             "but config.json names none")
        kernel = make_kernel(kernel_cfg, model_cfg.vocab_size, mask_id, tables, device)
        try:
            reading, support = reading_from_record(config.get("posterior"), mask_id)
            model.set_clean_support(support)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{directory / 'config.json'}: its posterior record is unusable ({exc}); re-export "
                                "the run") from exc
        model.posterior_reading = reading
        return Exported(model, model_cfg, kind, kernel, tokenizer_info, config, mask_id, reading, tables,
                        tokenizer_name)
    return Exported(model, model_cfg, kind, kernel, tokenizer_info, config, mask_id, tokenizer_name=tokenizer_name)

"""The sample stage as a library: :class:`SampleConfig` and :func:`run_sample`, plus the helpers the
evaluate stage shares (sampler options, the export's S+, its sequence length, decoding).

``python -m pipeline.sample`` (pipeline/sample.py) parses its flags into a :class:`SampleConfig`
and calls :func:`run_sample`; ``python -m pipeline.evaluate`` uses :class:`SamplerOptions`,
:func:`export_association`, :func:`preprocessed_seq_len` and :func:`decode_all` for its sweep.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.artifacts import ConfigError, StageRun
from pipeline.common.devices import check_device_available, check_device_name

from .base import HAZARDS, MDLM_SCHEDULES, METHODS, REMASK, SamplerConfig
from .conditioning import Conditioning, load_conditioning, prompt_texts, stop_token_id
from .penalty import WINDOW_SIDES, PenaltyConfig, SemanticAssociation, association_by_columns
from .runner import dist_info, draw_samples, gather_parts, write_part

STAGE = "sample"
DEFAULT_SEQ_LEN = 128  # when neither --seq-len nor the export's preprocessed data gives one
_CONDITIONED_FIELDS = ("prompt", "infill", "length", "stopped_at_eos")  # record fields of conditional runs


def default_method(kernel_name: str) -> str:
    """mdlm for the mask kernel (MDLM's ancestral sampler, which ctmc reproduces there), and for every
    other kernel ctmc: tau-leaping + predictor-corrector on the reverse rates, as the paper ran it (Sec 5.1)."""
    return "mdlm" if kernel_name == "mask" else "ctmc"


# Eq 23 weights when --lambda-freq / --lambda-sem are not given: on for the semantic kernels (the paper
# samples them with the penalty; without it they collapse into repeated clusters, Sec 4.2), off for
# mask and uniform (the penalty is SemDLM+'s, not part of those baselines). Values: the sweep in
# docs/sampling.md ("Penalty defaults"): lambda_freq = 1 cut repetition 16 % at +1 % Gen-PPL, every
# lambda_sem > 0 cost 9-45 % Gen-PPL on that model, so the semantic term is opt-in.
SEMANTIC_KERNELS = ("semdlm", "semdlm_softmax", "semdlm_plus")
DEFAULT_PENALTY = (1.0, 0.0)  # (lambda_freq, lambda_sem)


def default_penalty(kernel_name: str) -> tuple[float, float]:
    return DEFAULT_PENALTY if kernel_name in SEMANTIC_KERNELS else (0.0, 0.0)


# Nucleus truncation of the clean proposal when --top-p is not given. Eq 121 (blockwise) "samples a
# truncated clean proposal" (App E.1) without a value: 0.9, the usual nucleus (Holtzman et al. 2020, and
# ReMDM's nucleus sampling). The other samplers draw from p_theta itself: for ctmc / tau_leaping /
# mdlm the draw *is* the model's reverse process (the one the likelihood bounds), and truncating it
# lowers entropy and Gen-PPL together (Zheng et al. 2024).
BLOCKWISE_TOP_P = 0.9


def default_top_p(method: str) -> float | None:
    return BLOCKWISE_TOP_P if method == "blockwise" else None


@dataclass(frozen=True)
class SamplerOptions:
    """The sampler flags of ``pipeline.sample`` and ``pipeline.evaluate``: every field of
    :class:`SamplerConfig` but ``steps`` and the Eq 23 weights (which evaluate sweeps). ``method``
    and ``seq_len`` left at None are resolved from the export by :meth:`resolve`. ``prompt`` /
    ``infill`` / ``stop_at_eos``: conditional generation (pipeline/sampling/conditioning.py)."""

    method: str | None = None  # None: mdlm for the mask kernel, else ctmc
    seq_len: int | None = None  # None: the preprocessed sequence length, else DEFAULT_SEQ_LEN
    strides: int | None = None  # None: 1 with --infill (the model sees the right context), else 2
    top_k: int | None = None
    top_p: float | None = None  # None: default_top_p(method)
    rho: float = 1.0
    freeze_threshold: float | None = None
    schedule: str = "ancestral"
    remask: str = "none"
    remask_eta: float = 0.02
    corrector_steps: int = 1
    corrector_step_size: float = 1.0
    corrector_frac: float = 0.1
    hazard: str = "integrated"
    final_argmax: bool = False
    cache: bool = True
    window: int = 16  # Eq 23 window W (also the window of the evaluation's repetition metrics)
    window_side: str = "left"
    prompt: str | None = None  # a fixed prefix: the text, or a file with one prompt per line
    infill: str | None = None  # a template: text with [MASK] / [MASK]*N at the generated positions
    stop_at_eos: bool = False  # cut each sample after its first EOS past the prompt; skip blocks after it

    def __post_init__(self):
        # The rest is checked by SamplerConfig once the export fixes method and seq_len.
        if self.prompt is not None and self.infill is not None:
            raise ConfigError("--prompt and --infill exclude each other")
        if self.infill is not None:
            if self.strides not in (None, 1):
                raise ConfigError(f"--infill generates in one block (the model must see the text right of every "
                                  f"[MASK]): --strides must be 1, got {self.strides}")
            if self.seq_len is not None:
                raise ConfigError("--infill fixes the sequence length (the template's tokens): drop --seq-len")
            if self.stop_at_eos:
                raise ConfigError("--stop-at-eos cannot shorten an --infill template (it fixes the length)")
        if self.strides is None:
            object.__setattr__(self, "strides", 1 if self.infill is not None else 2)
        for name, allowed in (("method", METHODS), ("schedule", MDLM_SCHEDULES), ("remask", REMASK),
                              ("hazard", HAZARDS), ("window_side", WINDOW_SIDES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {allowed}, got {value!r}")
        if self.seq_len is not None and self.seq_len < 1:
            raise ConfigError(f"--seq-len must be >= 1, got {self.seq_len}")
        if self.window < 0:
            raise ConfigError(f"--window must be >= 0, got {self.window}")

    def resolve(self, kernel_name: str, default_seq_len: int | None, steps: int, lambda_freq: float | None,
                lambda_sem: float | None) -> SamplerConfig:
        """The SamplerConfig of one (steps, lambda_freq, lambda_sem) point for a model with this kernel
        (a weight left at None takes :func:`default_penalty`)."""
        default_freq, default_sem = default_penalty(kernel_name)
        lambda_freq = default_freq if lambda_freq is None else lambda_freq
        lambda_sem = default_sem if lambda_sem is None else lambda_sem
        method = self.method or default_method(kernel_name)
        return SamplerConfig(
            method=method, steps=steps,
            seq_len=self.seq_len or default_seq_len or DEFAULT_SEQ_LEN, strides=self.strides,
            top_k=self.top_k, top_p=default_top_p(method) if self.top_p is None else self.top_p, rho=self.rho,
            freeze_threshold=self.freeze_threshold,
            schedule=self.schedule, remask=self.remask, remask_eta=self.remask_eta,
            corrector_steps=self.corrector_steps, corrector_step_size=self.corrector_step_size,
            corrector_frac=self.corrector_frac, hazard=self.hazard, final_argmax=self.final_argmax, cache=self.cache,
            penalty=PenaltyConfig(lambda_freq=lambda_freq, lambda_sem=lambda_sem, window=self.window,
                                  window_side=self.window_side))


@dataclass(frozen=True)
class SampleConfig:
    """What ``python -m pipeline.sample`` draws, and how.

    ``device`` and ``progress`` are runtime-only and stay out of the freshness key. ``batch_size``
    is NOT runtime-only: batch k is drawn with a generator seeded from (seed, k) and sample i lies
    in batch i // batch_size (pipeline/sampling/runner.py), so another batch size draws other
    samples; it is part of :meth:`artifact_config`. (A CUDA generator yields another stream than a
    CPU one, so samples are reproducible per device type; like every stage, the freshness key
    treats the device as runtime-only.)
    """

    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    steps: int = 128  # total denoising steps over all blocks
    lambda_freq: float | None = None  # None: default_penalty(kernel)
    lambda_sem: float | None = None
    num_samples: int = 64
    batch_size: int = 16
    seed: int = 0
    tokenizer: str | None = None  # for decoding; None: the export's
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        if self.num_samples < 1 or self.batch_size < 1:
            raise ConfigError("--num-samples and --batch-size must be >= 1")
        check_device_name(self.device)

    def sampler_config(self, kernel_name: str, default_seq_len: int | None) -> SamplerConfig:
        return self.sampler.resolve(kernel_name, default_seq_len, self.steps, self.lambda_freq, self.lambda_sem)

    def artifact_config(self, sampler: SamplerConfig, tokenizer: str | None) -> dict:
        """The fields that decide the samples, with the sampler resolved against the export and the
        tokenizer that decodes them (device and progress left out). The conditioning options only
        when given, so that artifacts of unconditional runs keep their key (a prompt file's content
        is a stage input, see :func:`run_sample`)."""
        cfg = {"sampler": sampler.to_dict(), "num_samples": self.num_samples, "batch_size": self.batch_size,
               "seed": self.seed, "tokenizer": tokenizer}
        cfg.update(conditioning_options(self.sampler))
        return cfg


def conditioning_options(options: SamplerOptions) -> dict:
    """prompt / infill / stop_at_eos of ``options`` where they are set."""
    given = {"prompt": options.prompt, "infill": options.infill, "stop_at_eos": options.stop_at_eos or None}
    return {k: v for k, v in given.items() if v is not None}


# --------------------------------------------------------------------------- helpers shared with evaluate
def load_association(neighbors_dir: str | os.PathLike, device="cpu") -> SemanticAssociation:
    """S+ of Eq 114 (the artifact's semantic_assoc_*.npy) in the column form the penalty uses."""
    from pipeline.common.neighbor_artifact import load_neighbor_tables

    tables = load_neighbor_tables(neighbors_dir)
    return association_by_columns(tables.assoc_indices.to(device), tables.assoc_weights.to(device))


def export_association(exported, device="cpu") -> SemanticAssociation | None:
    """S+ of a loaded export's neighbour tables (``exported.tables``, read once by load_export), or None."""
    tables = exported.tables
    return None if tables is None else association_by_columns(tables.assoc_indices.to(device),
                                                              tables.assoc_weights.to(device))


def preprocessed_seq_len(export_config: dict) -> int | None:
    """The sequence length of the data an export was trained on: config.json's ``data``, for an older export
    its preprocess manifest (None if unknown)."""
    from pipeline.common.export_contents import data_seq_len

    return data_seq_len(export_config)


def resolve_conditioning(options: SamplerOptions, exported, tokenizer_name: str | None
                         ) -> tuple[Conditioning | None, int | None, list[Path]]:
    """(tokenised prompt / infill template or None, EOS id of --stop-at-eos or None, prompt files to
    fingerprint) of ``options`` for the export."""
    cond = load_conditioning(options.prompt, options.infill, exported.config, exported.tokenizer_info,
                             tokenizer_name or exported.tokenizer_name)
    stop_id = stop_token_id(exported.config, exported.tokenizer_info) if options.stop_at_eos else None
    files = [prompt_texts(options.prompt)[1]] if options.prompt is not None else []
    return cond, stop_id, [f for f in files if f is not None]


def conditioned_seq_len(cond: Conditioning | None, export_config: dict, given: int | None = None) -> int | None:
    """The default sequence length: an infill template's, else the training data's; None when --seq-len
    (``given``) decides, or when unknown (DEFAULT_SEQ_LEN then, after a warning on stderr)."""
    if cond is not None and cond.kind == "infill":
        return cond.length
    seq_len = preprocessed_seq_len(export_config) if given is None else None
    if seq_len is None and given is None:
        from pipeline.common.export_contents import warn_unknown_seq_len

        warn_unknown_seq_len(export_config, DEFAULT_SEQ_LEN)
    return seq_len


def decode_all(records: list[dict], tokenizer_name: str | None) -> None:
    """Add ``text`` (special tokens skipped) to every record."""
    from pipeline.common.hf_assets import load_tokenizer

    tok = load_tokenizer(tokenizer_name)
    for rec in records:
        rec["text"] = tok.decode(rec["ids"], skip_special_tokens=True)


def resolve_device(device: str) -> str:
    """``cuda`` under torchrun means this rank's GPU, cuda:LOCAL_RANK."""
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{local}" if device == "cuda" and local is not None else device


# --------------------------------------------------------------------------- the stage
def run_sample(cfg: SampleConfig, model: str | os.PathLike, out: str | os.PathLike, force: bool = False,
               log=print, break_lock: bool = False) -> Path:
    """Draw ``cfg.num_samples`` samples from the export ``model`` into the artifact ``out``.

    Under torchrun (RANK, WORLD_SIZE) every rank draws its batches and rank 0 gathers and writes;
    rank 0 holds the output's lock for the whole run.
    """
    from pipeline.common.export_artifact import load_export

    device = resolve_device(cfg.device)
    check_device_available(device)
    exported = load_export(model, device=device)
    if exported.kind != "diffusion":
        raise ConfigError(f"{model}: kind {exported.kind!r} cannot be sampled by this stage (needs 'diffusion')")
    kernel = exported.kernel
    tokenizer_name = cfg.tokenizer or exported.tokenizer_info.get("name_or_path")
    cond, stop_id, prompt_files = resolve_conditioning(cfg.sampler, exported, cfg.tokenizer)
    sampler = cfg.sampler_config(kernel.cfg.name, conditioned_seq_len(cond, exported.config, cfg.sampler.seq_len))
    if sampler.seq_len > exported.model_cfg.max_seq_len:
        what = "the --infill template's length" if cfg.sampler.infill is not None else "--seq-len"
        raise ConfigError(f"{what} {sampler.seq_len} exceeds the model's max_seq_len "
                          f"{exported.model_cfg.max_seq_len}")
    template = cond.template(sampler.seq_len) if cond is not None else None
    association = export_association(exported, device) if sampler.penalty.lambda_sem > 0 else None
    if sampler.penalty.lambda_sem > 0 and association is None:
        raise ConfigError("--lambda-sem > 0 needs the export's neighbour tables (config.json artifacts.neighbors)")
    out = Path(out)
    stage = StageRun(STAGE, out, config=cfg.artifact_config(sampler, tokenizer_name), inputs=prompt_files,
                     upstream={"model": Path(model)}, tokenizer=exported.tokenizer_info, force=force,
                     break_lock=break_lock)
    rank, world = dist_info()
    if stage.is_up_to_date():  # every rank sees the same manifest, so all skip together
        log(f"{out}: up to date")
        return out
    with stage.locked() if rank == 0 else contextlib.nullcontext():  # before the sampling work
        records = draw_samples(exported.model, kernel, sampler, cfg.num_samples, cfg.batch_size, cfg.seed,
                               association, rank, world, progress=cfg.progress, template=template, stop_id=stop_id)
        if world > 1:
            # Named by the config: ranks of a launch refused by the lock cannot mix other samples in.
            parts = out.parent / f".{out.name}.parts-{stage.config_hash[:12]}"
            write_part(parts, rank, records)
            if rank != 0:
                return out
            records = gather_parts(parts, world)
            shutil.rmtree(parts, ignore_errors=True)
        decode_all(records, cfg.tokenizer or exported.tokenizer_name)
        _write_samples(stage, records, sampler, world, stop_id)
    log(f"{out}: {len(records)} samples ({sampler.method}, {sampler.steps} steps)")
    return out


def _write_samples(stage: StageRun, records: list[dict], sampler: SamplerConfig, world: int,
                   stop_id: int | None) -> None:
    line_cfg = sampler.to_dict()
    with stage as tmp:
        with open(tmp / "samples.jsonl", "w") as fh:
            for rec in records:
                line = {"index": rec["index"], "ids": rec["ids"], "text": rec["text"],
                        "seed": {"run": rec["seed"], "batch": rec["batch_seed"], "row": rec["row"]},
                        "config": line_cfg}
                line.update({k: rec[k] for k in _CONDITIONED_FIELDS if k in rec})
                fh.write(json.dumps(line) + "\n")
        stage.extra["stats"] = {"samples": len(records), "world_size": world,
                                "network_calls_per_batch": records[0]["network_calls"] if records else 0}
        if stop_id is not None:
            stage.extra["stats"]["stopped_at_eos"] = sum(r["stopped_at_eos"] for r in records)

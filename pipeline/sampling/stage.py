"""The sample stage as a library: :class:`SampleConfig` and :func:`run_sample`, plus the helpers the
evaluate stage shares (sampler options, the export's S+, its sequence length, decoding).

``python -m pipeline.sample`` (pipeline/sample.py) parses its flags into a :class:`SampleConfig`
and calls :func:`run_sample`; ``python -m pipeline.evaluate`` uses :class:`SamplerOptions`,
:func:`export_association`, :func:`conditioned_seq_len` and :func:`decode_all` for its sweep.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipeline.common.artifacts import ConfigError, StageRun
from pipeline.common.cli_fields import check_choices, cli_field
from pipeline.common.devices import check_device_available, check_device_name, default_device
from pipeline.core.kernel_config import traits_of

from .base import CHAINS, HAZARDS, MDLM_SCHEDULES, METHODS, REMASK, SamplerConfig
from .conditioning import Conditioning, load_conditioning, prompt_texts, stop_token_id
from .penalty import WINDOW_SIDES, PenaltyConfig, SemanticAssociation, association_by_columns
from .runner import dist_info, draw_samples, gather_parts, write_part

STAGE = "sample"
DEFAULT_SEQ_LEN = 128  # when neither --seq-len nor the export's preprocessed data gives one
# record fields of conditional runs
_CONDITIONED_FIELDS = ("prompt", "infill", "length", "stopped_at_eos", "stopped_at_entropy")


def default_method(kernel_name: str) -> str:
    """The kernel's ``default_sampler`` trait: mdlm for mask, else ctmc (pipeline/core/kernel_config.py)."""
    return traits_of(kernel_name).default_sampler


# Eq 23 weights when --lambda-freq / --lambda-sem are not given: on for the kernels whose
# ``penalty_by_default`` trait says so (the semantic ones: the paper samples them with the penalty;
# without it they collapse into repeated clusters, Sec 4.2), off for mask and uniform. Values: the sweeps in
# docs/sampling.md ("Penalty defaults"), re-derived on kernel-aware models (600 and 6,000 steps): (1, 0.5)
# costs no measurable Gen-PPL against no penalty (+0.02 +- 0.19 nats of mean log Gen-PPL at 6,000 steps) and
# cuts repetition 39 % (0.101 -> 0.062); lambda_sem = 1 starts to cost (+0.27).
DEFAULT_PENALTY = (1.0, 0.5)  # (lambda_freq, lambda_sem)


def default_penalty(kernel_name: str) -> tuple[float, float]:
    return DEFAULT_PENALTY if traits_of(kernel_name).penalty_by_default else (0.0, 0.0)


# Nucleus truncation of the clean proposal when --top-p is not given. Eq 121 (blockwise) "samples a
# truncated clean proposal" (App E.1) without a value: 0.9, the usual nucleus (Holtzman et al. 2020, and
# ReMDM's nucleus sampling). The other samplers draw from p_theta itself: for ctmc / tau_leaping /
# mdlm the draw *is* the model's reverse process (the one the likelihood bounds), and truncating it
# lowers entropy and Gen-PPL together (Zheng et al. 2024).
BLOCKWISE_TOP_P = 0.9


def default_top_p(method: str) -> float | None:
    return BLOCKWISE_TOP_P if method == "blockwise" else None


_PENALTY_DEFAULT = "(default: off for mask/uniform, the documented values for the semantic kernels)"


@dataclass(frozen=True)
class SamplerOptions:
    """The sampler flags of ``pipeline.sample`` and ``pipeline.evaluate`` (each field declares its flag,
    pipeline/common/cli_fields.py): every field of :class:`SamplerConfig` and of its
    :class:`PenaltyConfig` but ``steps`` and the Eq 23 weights (which evaluate sweeps: SampleConfig),
    passed through by name by :meth:`resolve`. ``method``, ``seq_len``, ``strides`` and ``top_p`` left
    at None are resolved from the kernel, the export and the method. ``prompt`` / ``infill`` /
    ``stop_at_eos``: conditional generation (pipeline/sampling/conditioning.py)."""

    method: str | None = cli_field(None, choices=METHODS, help="default: mdlm for mask, else ctmc")
    seq_len: int | None = cli_field(  # None: the preprocessed sequence length, else DEFAULT_SEQ_LEN
        None, help=f"default: the preprocessed sequence length, else {DEFAULT_SEQ_LEN}")
    strides: int | None = cli_field(  # None: 1 with --infill (the model sees the right context), else 2
        None, help="semi-autoregressive blocks (paper: 2; default 2, with --infill 1)")
    top_k: int | None = cli_field(None, help="top-k truncation of the clean proposal (default: none)")
    top_p: float | None = cli_field(  # None: default_top_p(method)
        None, help="nucleus truncation of the clean proposal (default: 0.9 for blockwise, else none; 1 = off)")
    rho: float = cli_field(1.0, help="exponent of Eq 121 (blockwise)")
    freeze_threshold: float | None = cli_field(None, help="blockwise: freeze tokens this confident")
    schedule: str = cli_field("ancestral", choices=MDLM_SCHEDULES, help="mdlm unmasking schedule")
    remask: str = cli_field("none", choices=REMASK, help="mdlm ancestral: ReMDM remasking")
    remask_eta: float = cli_field(0.02, help="ReMDM-cap eta: sigma_t = min(eta, (1 - alpha_s) / alpha_t)")
    corrector_steps: int = cli_field(1, help="ctmc / tau_leaping corrector moves per step")
    corrector_step_size: float = cli_field(1.0, help="ctmc: corrector move length in units of the predictor step")
    corrector_frac: float = cli_field(0.1, help="tau_leaping: share of positions re-drawn")
    hazard: str = cli_field("integrated", choices=HAZARDS, help="ctmc: jump probability of a leap")
    chain: str = cli_field("auto", choices=CHAINS, help="ctmc: the CTMC realising the kernel's marginals "
                           "(auto: the resampling chain for SemDLM+ and uniform, docs/likelihood.md 6.7)")
    final_argmax: bool = cli_field(False, help="ctmc: last step takes argmax p_theta")
    cache: bool = cli_field(True, flag="--no-cache", help="mdlm: never reuse logits")
    window: int = cli_field(16, help="Eq 23 window W")  # also the window of the evaluation's repetition metrics
    window_side: str = cli_field(
        "left", choices=WINDOW_SIDES,
        help="Eq 23 window: the W positions before i (left, the paper's recent window) or W each side")
    prompt: str | None = cli_field(
        None, exclusive="conditioning", metavar="TEXT|FILE",
        help="fixed prefix; a file: one prompt per non-empty line, sample i uses prompt i mod n")
    infill: str | None = cli_field(
        None, exclusive="conditioning", metavar="TEMPLATE",
        help="generate the [MASK] / [MASK]*N positions of TEMPLATE, e.g. 'The [MASK]*5 sat on the mat'")
    stop_at_eos: bool = cli_field(
        False, help="cut each sample after its first [SEP]/EOS past the prompt (skips blocks after it)")
    length: int | None = cli_field(
        None, help="tokens per sample beyond --seq-len (the model's window): the sampler goes on in blocks of "
                   "seq_len/strides, each conditioned on the last seq_len - seq_len/strides tokens")
    entropy_stop: float | None = cli_field(
        None, metavar="NATS", help="stop a sample once its last --entropy-window tokens have an entropy below "
                                   "NATS, cut before them (BD3-LM: 4; default: off)")
    entropy_window: int = cli_field(256, help="tokens the --entropy-stop rule looks at (BD3-LM: 256)")

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
            if self.stop_at_eos or self.length is not None or self.entropy_stop is not None:
                raise ConfigError("--infill fixes the length (the template's tokens): no --stop-at-eos, --length "
                                  "or --entropy-stop")
        if self.strides is None:
            object.__setattr__(self, "strides", 1 if self.infill is not None else 2)
        check_choices(self)
        if self.seq_len is not None and self.seq_len < 1:
            raise ConfigError(f"--seq-len must be >= 1, got {self.seq_len}")
        if self.window < 0:
            raise ConfigError(f"--window must be >= 0, got {self.window}")

    def resolve(self, kernel_name: str, default_seq_len: int | None, steps: int, lambda_freq: float | None,
                lambda_sem: float | None) -> SamplerConfig:
        """The SamplerConfig of one (steps, lambda_freq, lambda_sem) point for a model with this kernel
        (a weight left at None takes :func:`default_penalty`); every other field is this object's own,
        copied by name."""
        default_freq, default_sem = default_penalty(kernel_name)
        penalty = PenaltyConfig(**self._shared_with(PenaltyConfig),
                                lambda_freq=default_freq if lambda_freq is None else lambda_freq,
                                lambda_sem=default_sem if lambda_sem is None else lambda_sem)
        method = self.method or default_method(kernel_name)
        resolved = {"method": method, "steps": steps, "seq_len": self.seq_len or default_seq_len or DEFAULT_SEQ_LEN,
                    "top_p": default_top_p(method) if self.top_p is None else self.top_p, "penalty": penalty}
        return SamplerConfig(**{**self._shared_with(SamplerConfig), **resolved})

    def _shared_with(self, cls) -> dict:
        """This object's values of the fields that the dataclass ``cls`` also has (by name)."""
        own = {f.name for f in fields(self)}
        return {f.name: getattr(self, f.name) for f in fields(cls) if f.name in own}


@dataclass(frozen=True)
class SampleConfig:
    """What ``python -m pipeline.sample`` draws, and how (each field declares its flag; ``python -m
    pipeline.evaluate`` takes the same flags, with ``sweep`` ones as comma lists, for its fields of
    the same names).

    ``device`` and ``progress`` are runtime-only and stay out of the freshness key. ``batch_size``
    is NOT runtime-only: batch k is drawn with a generator seeded from (seed, k) and sample i lies
    in batch i // batch_size (pipeline/sampling/runner.py), so another batch size draws other
    samples; it is part of :meth:`artifact_config`. (A CUDA generator yields another stream than a
    CPU one, so samples are reproducible per device type; like every stage, the freshness key
    treats the device as runtime-only.)
    """

    sampler: SamplerOptions = field(default_factory=SamplerOptions)  # its flags, nested
    steps: int = cli_field(128, sweep=True, help="total denoising steps over all blocks")
    lambda_freq: float | None = cli_field(  # None: default_penalty(kernel)
        None, sweep=True, help=f"Eq 23 frequency penalty {_PENALTY_DEFAULT}")
    lambda_sem: float | None = cli_field(
        None, sweep=True, help=f"Eq 23 semantic penalty, needs neighbour tables {_PENALTY_DEFAULT}")
    num_samples: int = cli_field(64, help="samples to draw")
    batch_size: int = cli_field(
        16, help="samples drawn per batch (another size draws other samples: batch k is seeded from (seed, k))")
    seed: int = cli_field(0, help="random seed of the draws")
    tokenizer: str | None = cli_field(None, help="tokenizer for decoding (default: the export's)")
    device: str = cli_field("cpu", cli_default=default_device,
                            help="torch device (default: cuda if available, else cpu)")
    progress: bool = cli_field(True, flag="--quiet", help="no progress bar")

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
def export_association(exported, device="cpu") -> SemanticAssociation | None:
    """S+ of Eq 114 in the column form the penalty uses, from a loaded export's neighbour tables
    (``exported.tables``, read once by load_export), or None."""
    tables = exported.tables
    return None if tables is None else association_by_columns(tables.assoc_indices.to(device),
                                                              tables.assoc_weights.to(device))


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
    from pipeline.common.export_contents import data_seq_len, warn_unknown_seq_len

    seq_len = data_seq_len(export_config) if given is None else None
    if seq_len is None and given is None:
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
        if sampler.entropy_stop is not None:
            stage.extra["stats"]["stopped_at_entropy"] = sum(r["stopped_at_entropy"] for r in records)

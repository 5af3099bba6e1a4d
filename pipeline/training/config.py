"""TrainConfig: every knob of a training run, loaded from YAML with ``key=value`` overrides.

    cfg = load_config("configs/tiny.yaml", ["lr=1e-3", "model_args.n_layer=4"])

Values of overrides are parsed with ``yaml.safe_load`` (so ``1e-3``, ``true``, ``[0.9, 0.95]`` work);
dotted keys reach into the dict-valued fields (``model_args``, ``kernel_args``, ``data``). Unknown keys,
values of the wrong type (also inside ``model_args`` / ``kernel_args`` / ``data``), unparsable YAML and
inconsistent values raise ConfigError (a ValueError) with the offending key named.
"""
from __future__ import annotations

import math
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path

import yaml

from pipeline.common.artifacts import ConfigError
from pipeline.core.kernels import KernelConfig
from pipeline.core.likelihood import BOUNDS
from pipeline.core.model import ModelConfig
from pipeline.core.objectives import LOSSES, LossConfig
from pipeline.core.posterior import PosteriorConfig, Reading, make_reading
from pipeline.core.time_sampling import T_MIN
from pipeline.training.streams import DataSpec, parse_data
from pipeline.training.wandb_logger import WANDB_MODES

LR_SCHEDULES = ("constant", "cosine")
HEAD_INITS = ("unigram", "zero")  # the output bias at step 0 of a new run (head_init)
ELBO_CHAINS = ("flux", "resampling")  # the chain whose path bound loss=elbo trains (docs/likelihood.md 6.7)
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    # -- model, kernel, objective (these define the run: changing them on resume is refused)
    model: str = "tiny"                       # ModelConfig preset
    model_args: dict = field(default_factory=dict)   # overrides of the preset
    kernel: str = "mask"                      # KernelConfig preset
    kernel_args: dict = field(default_factory=dict)
    loss: str = "change_aware"                # change_aware (Eq 120) | elbo (NELBO-weighted CE)
    # loss=elbo on SemDLM+: the path bound of the flux chain (the conditional-path ELBO) or of the resampling
    # chain (docs/likelihood.md 6.7; kernel-aware parameterisation only)
    elbo_chain: str = "flux"
    lambda_chg: float = 1.0
    lambda_same: float = 0.1
    t_min: float = T_MIN                      # the one t_min (pipeline.core.time_sampling.T_MIN)
    parameterization: str = "kernel"          # kernel: p ∝ f_theta q_t(x_t | v) | direct (pipeline/core/posterior.py)
    clean_support: str = "special"            # special | observed | all: tokens the model never reads as clean
    change_correction: bool = True            # change_aware: read the output with log(lambda_chg / lambda_same)
    antithetic_t: bool = True                 # global-batch stratified t (pipeline.core.time_sampling)
    # -- artifacts and run directory
    preprocessed: str | None = None
    neighbors: str | None = None
    run_dir: str | None = None
    seq_len: int | None = None                # expected sequence length of the data (checked, None = any)
    init_from: str | None = None              # export or run dir whose weights start a new run (init_from.py)
    init_from_weights: str = "ema"            # init_from a run dir: its ema | raw weights
    # zero: MDLM's output layer (uniform first prediction); unigram: its bias starts at the training data's
    # log unigram, so step 0 predicts token frequencies: better for short runs (make demo), worse for mask
    # by 600 steps (docs/training.md, "Where the output starts")
    head_init: str = "zero"
    # -- batch and optimisation
    global_batch: int = 16                    # sequences per optimizer step, all ranks
    micro_batch: int = 8                      # sequences per rank per forward
    max_steps: int = 100
    lr: float = 3e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    warmup_steps: int = 10
    lr_schedule: str = "constant"             # after warmup: constant | cosine
    min_lr_ratio: float = 0.1                 # cosine floor as a fraction of lr
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    precision: str = "auto"                   # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False                     # torch.compile the model's forward in place (see bench/gpu.py)
    adamw: str = "fused"                      # fused (one kernel, CPU and GPU) | foreach (bench: --compare)
    seed: int = 0
    # -- data (besides preprocessed): streams and mixtures, pipeline/training/streams.py
    data: dict = field(default_factory=dict)  # {streams: [{remote, local, proportion|repeat|choose}], ...}
    shuffle_seed: int = 9176
    num_canonical_nodes: int = 1              # fixed, so resuming on another world size keeps the order
    num_workers: int = 0
    # -- validation, logging, checkpoints
    val_every: int = 50
    val_batches: int = 4
    val_bound: str = "continuous"             # continuous (the evaluation's default bound) | tstep
    val_mc_steps: int = 4                     # val_bound=tstep: Monte-Carlo steps of the T-step bound
    val_num_steps: int = 1000                 # val_bound=tstep: T of that bound
    log_every: int = 10
    loggers: tuple = ("tensorboard",)         # beside metrics.jsonl: [tensorboard], [wandb] or [tensorboard, wandb]
    wandb_project: str = "semdlm"
    wandb_mode: str = "auto"                  # auto (online with a key and a network, else offline), online, offline
    ckpt_every: int = 50                      # 0: no checkpoints (benchmarks), except on a stop signal / abort
    keep_last: int = 3
    max_bad_steps: int = 5                    # NaN/Inf guard: abort (with a checkpoint) after this many in a row
    probe_every: int = 0                      # gradient-variance probe per t-bucket (0 = off)
    probe_buckets: int = 4
    probe_samples: int = 4                    # micro-batches per bucket
    peak_flops: float = 989e12                # per device bf16 dense peak for MFU: H100/H200 989e12, A100 312e12
    log_sample_ids: bool = False              # write each step's sample ids to RUN_DIR/sample_ids_rank{R}.jsonl
    # A collective that waits longer than this ends the run with an error (a lost node, a hung rank) instead of
    # hanging until the job's time limit; 600 s (torch's NCCL default) leaves room for the slowest legitimate
    # wait, rank 0 writing a checkpoint while the others sit in the next barrier (docs/slurm.md, Multi-node).
    dist_timeout_s: float = 600.0
    # -- samples during training (pipeline/training/samples.py; rank 0, EMA weights, kernel's default sampler)
    sample_every: int = 0                     # 0 = off
    sample_num: int = 4                       # sequences per draw
    sample_steps: int = 32                    # sampler steps per draw (few: a glance, not an evaluation)
    judge: str | None = None                  # Gen-PPL judge of the draws: an AR export or a HF causal LM

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.loggers = (self.loggers,) if isinstance(self.loggers, str) else tuple(self.loggers)
        problems = []
        positive = ("global_batch", "micro_batch", "max_steps", "log_every", "val_batches", "val_mc_steps",
                    "val_num_steps", "keep_last", "max_bad_steps", "probe_buckets", "probe_samples", "sample_num",
                    "sample_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_workers", "weight_decay", "shuffle_seed", "seed"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not set(self.loggers) <= {"tensorboard", "wandb"}:
            problems.append(f"loggers must be a list of tensorboard, wandb; got {list(self.loggers)}")
        if self.wandb_mode not in WANDB_MODES:
            problems.append(f"wandb_mode must be auto, online or offline; got {self.wandb_mode!r}")
        if not self.dist_timeout_s > 0:
            problems.append(f"dist_timeout_s must be > 0, got {self.dist_timeout_s}")
        if self.num_canonical_nodes < 1 or (self.seq_len is not None and self.seq_len < 1):
            problems.append("num_canonical_nodes and seq_len (when set) must be >= 1")
        if not (self.adam_eps > 0 and self.peak_flops > 0 and math.isfinite(self.lr)):
            problems.append("adam_eps and peak_flops must be > 0 and lr finite")
        if not 0.0 <= self.t_min < 1.0:
            problems.append(f"t_min must be in [0, 1), got {self.t_min}")
        for name, allowed in (("loss", LOSSES), ("lr_schedule", LR_SCHEDULES), ("precision", PRECISIONS),
                              ("val_bound", BOUNDS), ("init_from_weights", ("ema", "raw")),
                              ("head_init", HEAD_INITS), ("elbo_chain", ELBO_CHAINS),
                              ("adamw", ("fused", "foreach"))):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.elbo_chain == "resampling" and (self.loss != "elbo" or self.parameterization != "kernel"):
            problems.append("elbo_chain=resampling trains the resampling chain's bound: it needs loss=elbo and "
                            "parameterization=kernel")
        if self.global_batch % max(self.micro_batch, 1):
            problems.append(f"global_batch={self.global_batch} is not a multiple of micro_batch={self.micro_batch}")
        if not self.lr > 0 or min(self.warmup_steps, self.val_every, self.probe_every, self.ckpt_every,
                                  self.sample_every) < 0:
            problems.append("lr must be > 0; warmup_steps, val_every, probe_every, ckpt_every, sample_every must "
                            "be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.min_lr_ratio <= 1.0 or self.grad_clip <= 0:
            problems.append("min_lr_ratio must be in [0, 1] and grad_clip > 0")
        if len(self.betas) != 2 or not all(_is_number(b) and 0.0 <= b < 1.0 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if problems:
            raise ConfigError("invalid TrainConfig: " + "; ".join(problems))
        # Build the sub-configs now so a bad preset or field fails at load time, not mid-run.
        self.data_spec()
        self.model_config()
        self.kernel_config()
        self.loss_config()
        self.posterior_config()
        if not self.model_config().causal:
            try:
                self.reading()
            except ValueError as exc:
                raise ConfigError(f"invalid TrainConfig: {exc}") from None

    # -- derived configs
    def model_config(self, vocab_size: int | None = None, seq_len: int | None = None) -> ModelConfig:
        args = _typed_args("model_args", self.model_args, ModelConfig)
        if vocab_size is not None:
            args["vocab_size"] = vocab_size
        cfg = ModelConfig.preset(self.model, **args)
        if seq_len is not None and seq_len > cfg.max_seq_len:
            raise ValueError(f"data seq_len {seq_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
        return cfg

    def kernel_config(self) -> KernelConfig:
        args = _typed_args("kernel_args", self.kernel_args, KernelConfig)
        if "name" in args:
            raise ConfigError("kernel_args.name: choose the kernel with kernel=NAME (or --kernel NAME)")
        return KernelConfig.preset(self.kernel, **args)

    def data_spec(self) -> DataSpec | None:
        """The run's train / validation streams (one for ``preprocessed``); None when no data is named."""
        return parse_data(self.data, self.preprocessed)

    def loss_config(self) -> LossConfig:
        return LossConfig(self.lambda_chg, self.lambda_same)

    def posterior_config(self) -> PosteriorConfig:
        try:
            return PosteriorConfig(self.parameterization, self.clean_support, self.change_correction)
        except ValueError as exc:
            raise ConfigError(f"invalid TrainConfig: {exc}") from None

    def reading(self, mask_id: int | None = None) -> Reading:
        """How this run's output is read as a posterior in bounds and samplers (the loss reads it uncorrected)."""
        return make_reading(self.posterior_config(), self.kernel_config().name, self.loss, self.lambda_chg,
                            self.lambda_same, mask_id)

    def accum_steps(self, world_size: int) -> int:
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step:
            raise ValueError(f"global_batch={self.global_batch} is not divisible by micro_batch * world_size = "
                             f"{self.micro_batch} * {world_size}")
        return self.global_batch // per_step

    def identity(self, vocab_size: int, seq_len: int, tokenizer_identity: str) -> dict:
        """What a checkpoint must agree on to be resumed: the model, kernel, objective and data format."""
        # activation checkpointing (an execution choice) may change between a run and its resume
        identity = {"model": self.model_config(vocab_size).architecture_dict(),
                    "kernel": self.kernel_config().to_dict(), "loss": self.loss,
                    "loss_config": asdict(self.loss_config()), "t_min": self.t_min, "seq_len": seq_len,
                    "tokenizer_identity": tokenizer_identity, "posterior": self.posterior_config().to_dict()}
        if self.elbo_chain != "flux":  # only when set: runs made before the option keep their identity
            identity["elbo_chain"] = self.elbo_chain
        return identity

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["loggers"] = list(self.loggers)
        return d


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _typed_args(name: str, args: dict, config_class) -> dict:
    """``model_args`` / ``kernel_args`` checked against the fields of the config they override."""
    declared = {f.name: _declared_type(f) for f in fields(config_class)}
    unknown = sorted(set(args) - set(declared))
    if unknown:
        raise ConfigError(f"unknown {name} {unknown}; known: {sorted(declared)}")
    checked = {k: _coerce(f"{name}.{k}", declared[k], v) for k, v in args.items()}
    # An int for a float field stays as given: checkpoint identities hold these values verbatim.
    return {k: args[k] if type(args[k]) is int and isinstance(v, float) else v for k, v in checked.items()}


def _declared_type(f: Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def _yaml_value(text: str, where: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{where}: not valid YAML ({detail})") from None


def parse_overrides(items: list[str]) -> dict:
    """["a=1", "model_args.n_layer=4"] -> {"a": 1, "model_args": {"n_layer": 4}} (values via yaml.safe_load)."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        *parents, leaf = key.strip().split(".")
        if not sep or not all(parents + [leaf]):
            raise ConfigError(f"override {item!r} is not of the form key=value (key: name or name.field)")
        value = _yaml_value(raw, f"override {item!r}") if raw != "" else None
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
        node[leaf] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _coerce(name: str, declared: str, value):
    """Check a value against the field's declared type; accept "3e-4" for floats (YAML 1.1 reads it as str)."""
    if value is None and "None" in declared:
        return None
    base = declared.split("|")[0].strip()
    try:
        if base == "float" and not isinstance(value, bool) and not math.isnan(float(value)):
            return float(value)
        if base == "int" and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
    except (TypeError, ValueError, OverflowError):  # OverflowError: inf (or 1e400) for an int
        pass
    expected = {"bool": bool, "str": str, "dict": dict, "tuple": (list, tuple)}.get(base)
    if expected is not None and isinstance(value, expected):
        return value
    raise ConfigError(f"{name} must be of type {declared}, got {value!r}")


def config_from_dict(values: dict) -> TrainConfig:
    declared = {f.name: _declared_type(f) for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ConfigError(f"unknown TrainConfig keys {unknown}; known keys: {sorted(declared)}")
    return TrainConfig(**{k: _coerce(k, declared[k], v) for k, v in values.items()})


def load_config(path: str | Path | None, overrides: list[str] | None = None, **explicit) -> TrainConfig:
    """YAML file (optional) <- key=value overrides <- explicit keyword values (CLI flags that are not None)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        loaded = _yaml_value(path.read_text(), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of TrainConfig keys")
        values = loaded
    values = _merge(values, parse_overrides(overrides or []))
    values = _merge(values, {k: v for k, v in explicit.items() if v is not None})
    return config_from_dict(values)


"""The study spec (``python -m pipeline.study SPEC``): what data, which models, which budget, which experiments.

A YAML file, validated here into frozen dataclasses; every mistake is one ConfigError line naming the
key. The presets live in ``configs/study/``; docs/study.md documents every key and the protocol
choices the paper leaves open.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from pipeline.common.errors import ConfigError
from pipeline.core.kernel_config import KERNEL_NAMES

TABLE2_LOSSES = ("change_aware", "elbo")
EXPERIMENTS = ("table2", "table3", "gamma", "penalty", "dispersion", "convergence", "sweeps")


@dataclass(frozen=True)
class DataSpec:
    """Preprocess inputs (``corpus``...) or existing artifacts (``preprocessed`` / ``neighbors``)."""

    corpus: tuple[str, ...] = ()
    test_corpus: tuple[str, ...] = ()
    mode: str = "lm1b"
    seq_len: int = 128
    wrap: bool = False  # lm1b mode: pack sentences into full sequences (BD3-LM; no [PAD] compute)
    valid_fraction: float = 0.02
    k_max: int = 64
    preprocessed: str | None = None
    neighbors: str | None = None

    def __post_init__(self):
        for name in ("corpus", "test_corpus"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if bool(self.corpus) == bool(self.preprocessed):
            raise ConfigError("data: give either corpus (preprocess inputs) or preprocessed (an artifact), not both")
        if self.mode not in ("lm1b", "owt"):
            raise ConfigError(f"data.mode must be lm1b or owt, got {self.mode!r}")
        if self.seq_len < 8 or self.k_max < 1 or not 0 < self.valid_fraction < 1:
            raise ConfigError("data: seq_len >= 8, k_max >= 1 and 0 < valid_fraction < 1")


@dataclass(frozen=True)
class TrainSpec:
    """The budget every model gets (the same for every cell: a comparison at equal budget)."""

    config: str = "configs/tiny.yaml"
    steps: int = 1000
    global_batch: int = 32
    micro_batch: int = 16
    lr: float | None = None  # None: the config's
    val_every: int | None = None  # None: four validations per run (the convergence curves)
    val_batches: int = 4
    overrides: dict = field(default_factory=dict)  # key: value for every run (train.py's key=value)
    gpus: int = 0  # GPUs per run for the cost estimate and --slurm (0: CPU)

    def __post_init__(self):
        if self.steps < 1 or self.global_batch < 1 or self.micro_batch < 1 or self.val_batches < 1:
            raise ConfigError("train: steps, global_batch, micro_batch and val_batches must be >= 1")
        if self.global_batch % self.micro_batch:
            raise ConfigError(f"train: global_batch {self.global_batch} is not a multiple of micro_batch "
                              f"{self.micro_batch}")
        if not isinstance(self.overrides, dict):
            raise ConfigError("train.overrides must be a mapping key: value")


@dataclass(frozen=True)
class EvalSpec:
    """How each model is scored: the test split (and eval sets) by its tightest bound, samples by the judge."""

    split: str = "test"  # the split of the preprocessed artifact the bound is scored on
    test_sequences: int | None = 256
    t_draws: int = 8
    eval_sets: tuple[str, ...] = ()  # evaluate's --eval-set NAME=SOURCE
    num_samples: int = 32
    batch_size: int = 16
    steps: int = 128  # sampling steps of the Gen-PPL column outside table3

    def __post_init__(self):
        object.__setattr__(self, "eval_sets", tuple(self.eval_sets))
        if min(self.t_draws, self.num_samples, self.batch_size, self.steps) < 1:
            raise ConfigError("eval: t_draws, num_samples, batch_size and steps must be >= 1")


@dataclass(frozen=True)
class Table2:
    kernels: tuple[str, ...] = ("mask", "uniform", "semdlm", "semdlm_plus")
    losses: tuple[str, ...] = TABLE2_LOSSES  # of every kernel but mask (mask: MDLM's objective, the ELBO)
    ar: bool = True


@dataclass(frozen=True)
class Table3:
    kernels: tuple[str, ...] = ("mask", "semdlm_plus")
    steps: tuple[int, ...] = (128, 256, 512)
    num_samples: int | None = None  # None: eval.num_samples
    entropy_filter: float | None = None  # None: 4.8 for samples of >= 128 tokens, else relative (docs/study.md)


@dataclass(frozen=True)
class Gamma:
    kernel: str = "semdlm_plus"
    values: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # gamma = k_power of k_t = 1 + (k_max - 1) t^gamma
    steps: int | None = None  # None: train.steps (the paper's Figs 1-2 train 15k steps)


@dataclass(frozen=True)
class Penalty:
    kernel: str = "semdlm_plus"
    lambda_freq: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    lambda_sem: tuple[float, ...] = (0.0, 0.5, 1.0)
    steps: int | None = None  # None: eval.steps


@dataclass(frozen=True)
class Dispersion:
    kernels: tuple[str, ...] = ("uniform", "semdlm", "semdlm_plus")
    probe_every: int | None = None  # None: twice per run


@dataclass(frozen=True)
class Convergence:
    kernels: tuple[str, ...] = ("uniform", "semdlm_plus")


@dataclass(frozen=True)
class Sweep:
    """Any training setting, swept: one run per value of ``key`` (train.py's key=value) on ``kernel``."""

    name: str
    kernel: str
    key: str
    values: tuple
    loss: str = "change_aware"


SECTIONS = {"table2": Table2, "table3": Table3, "gamma": Gamma, "penalty": Penalty, "dispersion": Dispersion,
            "convergence": Convergence}


@dataclass(frozen=True)
class StudySpec:
    name: str
    data: DataSpec
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    seeds: tuple[int, ...] = (0,)
    judge: str = "ar"  # "ar": the study's own AR baseline; else an AR export, a HF causal-LM dir/id, or "none"
    experiments: dict = field(default_factory=dict)  # name -> section dataclass (sweeps: tuple of Sweep)
    paper: str | None = None  # lm1b / owt: the paper's numbers beside ours in the report
    source: str | None = None  # the spec file (runtime only)

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            raise ConfigError("seeds: give at least one")
        if not self.experiments:
            raise ConfigError(f"experiments: name at least one of {', '.join(EXPERIMENTS)}")
        if self.paper not in (None, "lm1b", "owt"):
            raise ConfigError(f"paper must be lm1b or owt, got {self.paper!r}")

    def section(self, name: str):
        return self.experiments.get(name)


def _build(cls, raw, where: str):
    """A section dataclass from a mapping: unknown keys and wrong shapes are one line each."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_kernels(kernels, where: str) -> None:
    bad = [k for k in kernels if k not in KERNEL_NAMES]
    if bad:
        raise ConfigError(f"{where}: unknown kernel(s) {', '.join(bad)} (known: {', '.join(KERNEL_NAMES)})")


def parse_spec(raw: dict, source: str | None = None) -> StudySpec:
    """A StudySpec from the YAML mapping ``raw`` (relative paths stay relative to the working directory)."""
    if not isinstance(raw, dict):
        raise ConfigError("a study spec is a YAML mapping")
    top = {f.name for f in fields(StudySpec)} - {"source"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(top))})")
    if "name" not in raw or "data" not in raw:
        raise ConfigError("a study spec needs name and data")
    experiments = {}
    for name, section in (raw.get("experiments") or {}).items():
        if name == "sweeps":
            if not isinstance(section, list):
                raise ConfigError("experiments.sweeps: a list of {name, kernel, key, values[, loss]}")
            experiments[name] = tuple(_build(Sweep, s, f"experiments.sweeps[{i}]") for i, s in enumerate(section))
            for s in experiments[name]:
                _check_kernels([s.kernel], f"experiments.sweeps.{s.name}")
        elif name in SECTIONS:
            experiments[name] = _build(SECTIONS[name], section, f"experiments.{name}")
            kernels = getattr(experiments[name], "kernels", None) or [getattr(experiments[name], "kernel", "mask")]
            _check_kernels(kernels, f"experiments.{name}")
        else:
            raise ConfigError(f"experiments: unknown experiment {name!r} (known: {', '.join(EXPERIMENTS)})")
    t2 = experiments.get("table2")
    if t2 and set(t2.losses) - set(TABLE2_LOSSES):
        raise ConfigError(f"experiments.table2.losses: each of {TABLE2_LOSSES}")
    return StudySpec(name=str(raw["name"]), data=_build(DataSpec, raw["data"], "data"),
                     train=_build(TrainSpec, raw.get("train"), "train"),
                     eval=_build(EvalSpec, raw.get("eval"), "eval"),
                     seeds=tuple(raw.get("seeds", (0,))), judge=str(raw.get("judge", "ar")),
                     experiments=experiments, paper=raw.get("paper"), source=source)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a spec file (a preset name like ``smoke`` reads configs/study/smoke.yaml)."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        p = Path(__file__).resolve().parents[2] / "configs" / "study" / f"{path}.yaml"
    if not p.is_file():
        raise ConfigError(f"no study spec at {path!r} (a YAML file, or a preset: "
                          f"{', '.join(sorted(q.stem for q in presets_dir().glob('*.yaml')))})")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_spec(raw, source=str(p))


def presets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "configs" / "study"

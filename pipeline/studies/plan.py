"""A study spec -> the runs it trains and the cells (stage commands) that make and score them.

Every cell is one of the pipeline's own stage commands writing one artifact (preprocess, neighbour
tables, diagnose, train, export, evaluate), so a cell can be rerun, cached, resumed or submitted to
SLURM like any stage. A cell's key hashes its command and its dependencies' keys: a changed setting
changes the keys of exactly the cells it reaches (runner.py caches on them).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.kernel_config import traits_of

from .spec import StudySpec

DS_CONFIG = "ds_configs/zero2.json"
TRAIN_ENTRY = ("pipeline/train.py", "--ds_config", DS_CONFIG)
SHORT_LOSS = {"change_aware": "ca", "elbo": "elbo"}


@dataclass(frozen=True)
class Run:
    """One trained model: a kernel (None: the AR baseline) under a loss, a seed and extra settings."""

    kernel: str | None
    loss: str | None
    seed: int
    overrides: tuple[tuple[str, object], ...] = ()

    @property
    def name(self) -> str:
        parts = ["ar"] if self.kernel is None else [self.kernel, SHORT_LOSS.get(self.loss, self.loss)]
        parts += [f"{k.replace('.', '_')}{v:g}" if isinstance(v, float) else f"{k.replace('.', '_')}{v}"
                  for k, v in self.overrides]
        return "-".join(parts + [f"s{self.seed}"])

    @property
    def label(self) -> str:
        """How tables name it: the paper's names, the loss and any extra setting."""
        if self.kernel is None:
            return "AR (same budget)"
        extra = ", ".join(f"{k}={v}" for k, v in self.overrides)
        return f"{self.kernel} ({self.loss}{', ' + extra if extra else ''})"


def run_steps(spec: StudySpec, run: Run) -> int:
    """The run's training steps: its own budget (the gamma sweep's) or the study's."""
    return int(dict(run.overrides).get("max_steps", spec.train.steps))


def default_loss(kernel: str) -> str:
    """mask trains MDLM's objective (its ELBO); every other kernel the paper's change-aware loss (Eq 120)."""
    return "elbo" if traits_of(kernel).absorbing else "change_aware"


@dataclass(frozen=True)
class TrainArgs:
    """A train cell's command in parts: what slurm/train.sh takes as variables (``--slurm``, slurm.py)."""

    config: str
    data: Path  # the preprocess artifact
    run_dir: Path
    steps: int
    kernel: str | None  # None: the config's (the AR baseline)
    neighbors: Path | None  # None: the kernel reads no tables
    settings: tuple[str, ...]  # train.py's key=value overrides

    def argv(self) -> list[str]:
        """The command after the interpreter (its order is part of every train cell's key)."""
        argv = [*TRAIN_ENTRY, "--config", self.config, "--preprocessed", str(self.data), "--run-dir",
                str(self.run_dir), "--max-steps", str(self.steps)]
        argv += ["--kernel", self.kernel] if self.kernel is not None else []
        argv += ["--neighbors", str(self.neighbors)] if self.neighbors is not None else []
        return argv + list(self.settings)


@dataclass
class Cell:
    name: str  # "<kind>/<what>", unique
    kind: str  # preprocess | neighbors | diagnose | train | export | evaluate
    argv: list[str]  # the command after the Python interpreter
    out: Path
    deps: tuple[str, ...] = ()
    flops: float = 0.0  # estimated, for --dry-run (cost.py)
    experiments: set[str] = field(default_factory=set)
    run: Run | None = None
    key: str = ""
    train: TrainArgs | None = None  # train cells: the command in parts


@dataclass
class Plan:
    spec: StudySpec
    out: Path
    cells: dict[str, Cell]
    runs: dict[str, list[Run]]  # experiment -> the runs it reads

    def ordered(self) -> list[Cell]:
        """Cells in dependency order (the insertion order already is one: every cell is added after its deps)."""
        return list(self.cells.values())


def table2_runs(spec: StudySpec) -> list[Run]:
    t2 = spec.section("table2")
    runs = [Run(None, None, s) for s in spec.seeds] if t2.ar else []
    for kernel in t2.kernels:
        losses = ["elbo"] if traits_of(kernel).absorbing else list(t2.losses)
        runs += [Run(kernel, loss, s) for loss in losses for s in spec.seeds]
    return runs


def experiment_runs(spec: StudySpec) -> dict[str, list[Run]]:
    """experiment -> its runs (a run two experiments share is trained once)."""
    out: dict[str, list[Run]] = {}
    if spec.section("table2"):
        out["table2"] = table2_runs(spec)
    if spec.section("table3"):
        out["table3"] = [Run(k, default_loss(k), s) for k in spec.section("table3").kernels for s in spec.seeds]
    if spec.section("gamma"):
        g = spec.section("gamma")
        budget = (("max_steps", g.steps),) if g.steps else ()
        out["gamma"] = [Run(g.kernel, default_loss(g.kernel), s, (("k_power", float(v)),) + budget)
                        for v in g.values for s in spec.seeds]
    if spec.section("penalty"):
        k = spec.section("penalty").kernel
        out["penalty"] = [Run(k, default_loss(k), spec.seeds[0])]
    if spec.section("convergence"):
        out["convergence"] = [Run(k, default_loss(k), s) for k in spec.section("convergence").kernels
                              for s in spec.seeds]
    if spec.section("dispersion"):
        d = spec.section("dispersion")
        out["dispersion"] = [Run(k, default_loss(k), spec.seeds[0]) for k in d.kernels]
    for sweep in spec.section("sweeps") or ():
        out[f"sweep:{sweep.name}"] = [Run(sweep.kernel, sweep.loss, s, ((sweep.key, v),))
                                      for v in sweep.values for s in spec.seeds]
    return out


def _key(cell: Cell, cells: dict[str, Cell], out: Path) -> str:
    """The cell's command (with the study directory written as $OUT: a moved study keeps its cache) and
    its dependencies' keys."""
    payload = json.dumps([cell.argv, [cells[d].key for d in cell.deps]], default=str).replace(str(out), "$OUT")
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_plan(spec: StudySpec, out: Path, python: str = "python") -> Plan:
    """Every cell of ``spec`` under ``out`` (data/, runs/, exports/, eval/, penalty/, diagnose/)."""
    from .cost import eval_flops, train_flops

    out = Path(out)
    cells: dict[str, Cell] = {}

    def add(cell: Cell, experiments) -> Cell:
        cell.key = _key(cell, cells, out)
        if cell.name in cells:
            cells[cell.name].experiments |= set(experiments)
            return cells[cell.name]
        cell.experiments = set(experiments)
        cells[cell.name] = cell
        return cell

    runs = experiment_runs(spec)
    everything = set(runs) | {"report"}
    data_deps: tuple[str, ...] = ()
    pre, nb = Path(spec.data.preprocessed or out / "data" / "preprocessed"), Path(spec.data.neighbors or
                                                                                 out / "data" / "neighbors")
    if spec.data.corpus:
        argv = ["-m", "preprocess", "--input", *spec.data.corpus]
        argv += ["--test-input", *spec.data.test_corpus] if spec.data.test_corpus else []
        argv += ["--mode", spec.data.mode, "--seq-len", str(spec.data.seq_len), "--valid-fraction",
                 str(spec.data.valid_fraction), "--out", str(pre), "--no-progress"]
        argv += ["--wrap"] if spec.data.wrap else []
        data_deps = (add(Cell("preprocess", "preprocess", argv, pre), everything).name,)
    needs_tables = any(r.kernel and traits_of(r.kernel).needs_neighbors for rs in runs.values() for r in rs)
    nb_deps: tuple[str, ...] = data_deps
    if needs_tables and not spec.data.neighbors:
        argv = ["-m", "neighbor_index", "--preprocessed", str(pre), "--out", str(nb), "--k-max",
                str(spec.data.k_max), "--no-progress"]
        nb_deps = (add(Cell("neighbors", "neighbors", argv, nb, data_deps), everything).name,)
    if spec.section("dispersion"):
        argv = ["-m", "pipeline.diagnose", "--neighbors", str(nb), "--kernels",
                ",".join(spec.section("dispersion").kernels), "--out", str(out / "diagnose")]
        add(Cell("diagnose", "diagnose", argv, out / "diagnose", nb_deps), {"dispersion"})

    judge = spec.judge
    judge_deps: tuple[str, ...] = ()
    if judge == "ar":
        ar = Run(None, None, spec.seeds[0])
        runs.setdefault("judge", []).append(ar)
        judge = str(out / "exports" / ar.name)
        judge_deps = (f"export/{ar.name}",)
    probe = spec.section("dispersion")
    for experiment, experiment_run_list in runs.items():
        for run in experiment_run_list:
            uses = {experiment, "report"}
            args = _train_args(spec, run, pre, nb, out, probe)
            deps = nb_deps if args.neighbors is not None else data_deps
            train = add(Cell(f"train/{run.name}", "train", args.argv(), args.run_dir, deps,
                             train_flops(spec, run_steps(spec, run)), run=run, train=args), uses)
            add(Cell(f"export/{run.name}", "export", ["-m", "pipeline.export", str(train.out), "--out",
                                                      str(out / "exports" / run.name)],
                     out / "exports" / run.name, (train.name,), run=run), uses | {"judge"})
    for experiment, experiment_run_list in runs.items():
        if experiment == "judge":
            continue
        for run in experiment_run_list:
            steps = _sample_steps(spec, run)
            argv = ["-m", "pipeline.evaluate", "--model", str(out / "exports" / run.name), "--out",
                    str(out / "eval" / run.name), "--judge", judge if run.kernel else "none",
                    "--t-draws", str(spec.eval.t_draws), "--steps", ",".join(map(str, steps)),
                    "--num-samples", str(_num_samples(spec, run)),
                    "--batch-size", str(spec.eval.batch_size), "--quiet"]
            argv += [a for s in spec.eval.eval_sets for a in ("--eval-set", s)]
            if spec.eval.split != "test":
                argv += ["--test-split", str(pre / spec.eval.split)]
            if spec.eval.test_sequences:
                argv += ["--max-test-sequences", str(spec.eval.test_sequences)]
            deps = (f"export/{run.name}",) + (judge_deps if run.kernel else ())
            add(Cell(f"evaluate/{run.name}", "evaluate", argv, out / "eval" / run.name, deps,
                     eval_flops(spec, steps), run=run), {experiment, "report"})
    if spec.section("penalty"):
        p, run = spec.section("penalty"), runs["penalty"][0]
        steps = p.steps or spec.eval.steps
        argv = ["-m", "pipeline.evaluate", "--model", str(out / "exports" / run.name), "--out",
                str(out / "penalty" / run.name), "--judge", judge, "--no-nelbo", "--steps", str(steps),
                "--lambda-freq", ",".join(f"{v:g}" for v in p.lambda_freq),
                "--lambda-sem", ",".join(f"{v:g}" for v in p.lambda_sem),
                "--num-samples", str(spec.eval.num_samples), "--batch-size", str(spec.eval.batch_size), "--quiet"]
        grid = len(p.lambda_freq) * len(p.lambda_sem)
        add(Cell(f"penalty/{run.name}", "evaluate", argv, out / "penalty" / run.name,
                 (f"export/{run.name}",) + judge_deps, grid * eval_flops(spec, [steps], likelihood=False), run=run),
            {"penalty", "report"})
    for cell in cells.values():  # the argv of the interpreter comes first (not part of the key)
        cell.argv = [python, *cell.argv]
    return Plan(spec, out, cells, runs)


def _in_table3(spec: StudySpec, run: Run) -> bool:
    """A Table 3 model: its evaluation samples at Table 3's step counts and sample number."""
    t3 = spec.section("table3")
    return bool(t3) and run.kernel in t3.kernels and run.loss == default_loss(run.kernel) and not run.overrides


def _sample_steps(spec: StudySpec, run: Run) -> list[int]:
    return list(spec.section("table3").steps) if _in_table3(spec, run) else [spec.eval.steps]


def _num_samples(spec: StudySpec, run: Run) -> int:
    if _in_table3(spec, run) and spec.section("table3").num_samples:
        return spec.section("table3").num_samples
    return spec.eval.num_samples


def _train_args(spec: StudySpec, run: Run, pre: Path, nb: Path, out: Path, probe) -> TrainArgs:
    t = spec.train
    extra = dict(run.overrides)
    steps = run_steps(spec, run)
    extra.pop("max_steps", None)
    tables = nb if run.kernel is not None and traits_of(run.kernel).needs_neighbors else None
    every = t.val_every or max(1, steps // 4)
    settings = {"global_batch": t.global_batch, "micro_batch": t.micro_batch, "val_every": every,
                "val_batches": t.val_batches, "ckpt_every": every, "seed": run.seed,
                "log_every": max(1, min(100, steps // 20))}
    if t.lr is not None:
        settings["lr"] = t.lr
    settings.update(t.overrides)
    if run.kernel is None:
        settings["model_args.causal"] = True
    else:
        settings["loss"] = run.loss
        if probe and run.kernel in probe.kernels:
            settings["probe_every"] = probe.probe_every or max(1, t.steps // 2)
    settings.update(extra)
    return TrainArgs(t.config, pre, out / "runs" / run.name, steps, run.kernel, tables,
                     tuple(f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in settings.items()))

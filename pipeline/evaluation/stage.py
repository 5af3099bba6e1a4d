"""The evaluate stage as a library: :class:`EvaluateConfig` and :func:`run_evaluate`.

``python -m pipeline.evaluate`` (pipeline/evaluate.py) parses its flags into an
:class:`EvaluateConfig` and calls :func:`run_evaluate`: test NELBO / PPL of the export on its test
split and on every ``--eval-set`` (a zero-shot table, pipeline/evaluation/eval_sets.py), then the
samples of every sweep point (or of a given sample artifact) under Gen-PPL, entropy and diversity,
written as results.json, report.md, sweep.csv, plots and samples/.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.common.artifacts import ConfigError, StageRun, load_manifest
from pipeline.common.devices import check_device_available, check_device_name
from pipeline.core.likelihood import BOUNDS
from pipeline.core.time_sampling import T_SAMPLINGS
from pipeline.sampling.runner import draw_samples
from pipeline.sampling.stage import (
    SamplerOptions,
    conditioned_seq_len,
    conditioning_options,
    decode_all,
    export_association,
    resolve_conditioning,
)

from .baselines import training_counts
from .diversity import sample_metrics
from .eval_sets import EvalSetSpec, freshness_inputs, parse_eval_sets
from .frequency_floor import floor_applies, floor_comparison, frequency_export
from .genppl import DEFAULT_JUDGE, generative_perplexity, load_judge
from .learning_curve import plot_training_curve, training_curve
from .report import plot_entropy_histogram, plot_sweep, write_report, write_sweep_csv

STAGE = "evaluate"
# Fields that change how fast the stage runs, not what it writes: left out of the freshness key.
# judge_batch_size only groups the judge's chunks (each is scored on its own, right-padded under a
# causal mask). The sampling batch_size and the NELBO eval_batch_size are NOT among them: batch k of
# the samples is seeded from (seed, k), and the NELBO estimate draws t and x_t batch by batch from
# one seeded generator, so either batch size changes the numbers.
RUNTIME_ONLY = ("judge_batch_size", "device", "progress")


@dataclass(frozen=True)
class EvaluateConfig:
    """What ``python -m pipeline.evaluate`` measures, and how."""

    judge: str = DEFAULT_JUDGE  # HF causal LM id/dir, an AR export of this pipeline, or "none"
    judge_batch_size: int = 8
    nelbo: bool = True
    test_split: str | None = None  # None: PREPROCESSED/test of the export
    max_test_sequences: int | None = None  # None: the whole split (of every set)
    eval_batch_size: int = 16
    t_draws: int = 4
    nelbo_steps: int = 1000
    nelbo_seed: int = 0
    bound: str = "continuous"  # continuous (the kernel's tightest continuous-time bound) | tstep (T-step bound)
    t_sampling: str = "defensive"  # how t is drawn for the continuous bounds (time_sampling.bound_times)
    eval_sets: tuple[EvalSetSpec, ...] = ()  # --eval-set NAME=SOURCE[#detok=...] (strings are parsed)
    baseline: str | None = None  # an export scored on the same test sequences, with the paired difference
    # the kernel's bound for a frequency-only denoiser on the same draws (frequency_floor.py; not for mask / AR)
    frequency_floor: bool = True
    samples: str | None = None  # evaluate this sample artifact instead of sampling
    sample: bool = True  # False: likelihood only
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    steps: tuple[int, ...] = (128,)
    lambda_freq: tuple[float | None, ...] = (None,)  # None: the kernel's default (sampling.stage.default_penalty)
    lambda_sem: tuple[float | None, ...] = (None,)
    num_samples: int = 64
    batch_size: int = 16
    seed: int = 0
    tokenizer: str | None = None
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "lambda_freq", "lambda_sem"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} needs at least one value")
        object.__setattr__(self, "eval_sets", parse_eval_sets(self.eval_sets))
        if self.max_test_sequences is not None and self.max_test_sequences < 1:
            raise ConfigError(f"--max-test-sequences must be >= 1, got {self.max_test_sequences}")
        for name in ("judge_batch_size", "eval_batch_size", "t_draws", "nelbo_steps",
                     "num_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.bound not in BOUNDS:
            raise ConfigError(f"--bound must be one of {BOUNDS}, got {self.bound!r}")
        if self.t_sampling not in T_SAMPLINGS:
            raise ConfigError(f"--t-sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        check_device_name(self.device)
        if self.samples and not self.sample:
            raise ConfigError("give --samples or --no-samples, not both")
        if self.baseline and not self.nelbo:
            raise ConfigError("--baseline compares test likelihoods: not with --no-nelbo")
        if self.samples and conditioning_options(self.sampler):
            raise ConfigError("--prompt / --infill / --stop-at-eos shape the samples this stage draws, "
                              "not given --samples")

    @property
    def use_judge(self) -> bool:
        return self.judge not in ("none", "") and self.sample

    def artifact_config(self) -> dict:
        """The result-determining fields (what the manifest's config hash is taken of); the eval sets'
        sources are pinned by :meth:`freshness_sources` (StageRun inputs / upstream)."""
        cfg = asdict(self)
        for runtime_only in RUNTIME_ONLY:
            cfg.pop(runtime_only)
        if self.baseline is None:  # only when set: older artifacts keep their key
            cfg.pop("baseline")
        for name in ("prompt", "infill", "stop_at_eos"):  # only when set: older artifacts keep their key
            if name not in conditioning_options(self.sampler):
                cfg["sampler"].pop(name)
        return cfg

    def freshness_sources(self) -> tuple[list[Path], dict[str, Path]]:
        """(input files, upstream artifacts) of the test split given by --test-split and of every eval
        set: a changed file or a rebuilt artifact makes the evaluation stale."""
        inputs: list[Path] = []
        upstream: dict[str, Path] = {}
        sets = list(self.eval_sets)
        if self.nelbo and self.test_split:
            sets.insert(0, EvalSetSpec("test_split", str(self.test_split)))
        for spec in sets:
            files, artifacts = freshness_inputs(spec)
            inputs += files
            upstream.update(artifacts)
        return inputs, upstream


def read_samples(directory: Path) -> list[dict]:
    load_manifest(directory, stage="sample")
    return [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines() if line]


def evaluate_point(records: list[dict], judge, neighbors, cfg: EvaluateConfig) -> dict:
    """Metrics of one set of samples."""
    ids = [r["ids"] for r in records]
    row = sample_metrics(ids, neighbors, window=cfg.sampler.window)
    if judge is not None:
        g = generative_perplexity([r["text"] for r in records], judge, cfg.judge_batch_size)
        row.update(gen_ppl=g["gen_ppl"], judge_tokens=g["judge_tokens"], per_sample_ppl=g["per_sample_ppl"])
    return row


def _sweep(exported, cfg: EvaluateConfig, judge, neighbors, log, conditioning=(None, None)
           ) -> tuple[list[dict], dict]:
    """Draw and score the samples of every (steps, lambda_freq, lambda_sem) point; ``conditioning``:
    (prompts / infill template, EOS id) of :func:`pipeline.sampling.stage.resolve_conditioning`."""
    rows, point_samples = [], {}
    cond, stop_id = conditioning
    seq_len = conditioned_seq_len(cond, exported.config, cfg.sampler.seq_len)
    points = [cfg.sampler.resolve(exported.kernel.cfg.name, seq_len, steps, lf, ls)
              for steps, lf, ls in itertools.product(cfg.steps, cfg.lambda_freq, cfg.lambda_sem)]
    needs_sem = any(p.penalty.lambda_sem > 0 for p in points)
    association = export_association(exported, cfg.device) if needs_sem else None
    if needs_sem and association is None:
        raise ConfigError("--lambda-sem > 0 needs the export's neighbour tables")
    for sampler in points:
        steps, lf, ls = sampler.steps, sampler.penalty.lambda_freq, sampler.penalty.lambda_sem
        start = time.time()
        template = cond.template(sampler.seq_len) if cond is not None else None
        records = draw_samples(exported.model, exported.kernel, sampler, cfg.num_samples, cfg.batch_size,
                               cfg.seed, association, progress=cfg.progress, template=template, stop_id=stop_id)
        decode_all(records, cfg.tokenizer or exported.tokenizer_name)
        row = {"steps": steps, "lambda_freq": lf, "lambda_sem": ls, "num_samples": len(records),
               "method": sampler.method, "seconds": round(time.time() - start, 2)}
        row.update(evaluate_point(records, judge, neighbors, cfg))
        rows.append(row)
        point_samples[f"steps{steps}_lf{lf:g}_ls{ls:g}"] = records
        log(f"steps={steps} lambda_freq={lf:g} lambda_sem={ls:g}: gen_ppl={row.get('gen_ppl')} "
            f"entropy={row['entropy_mean']:.3f}")
    return rows, point_samples


def run_evaluate(cfg: EvaluateConfig, model: str | os.PathLike, out: str | os.PathLike, force: bool = False,
                 log=print, break_lock: bool = False) -> Path:
    """Evaluate the export ``model`` into the artifact ``out`` (see the module docstring)."""
    from pipeline.common.export_artifact import load_export
    from pipeline.common.export_contents import default_test_split

    check_device_available(cfg.device)
    exported = load_export(model, device=cfg.device)
    out = Path(out)
    upstream = {"model": Path(model)}
    if cfg.samples:  # pinned: a regenerated sample artifact makes this one stale
        load_manifest(cfg.samples, stage="sample")
        upstream["samples"] = Path(cfg.samples)
    set_inputs, set_upstream = cfg.freshness_sources()
    upstream.update(set_upstream)
    if cfg.baseline:  # pinned: a re-exported baseline makes this evaluation stale
        upstream["baseline"] = Path(cfg.baseline)
    conditioning, prompt_files = (None, None), []
    if exported.kind == "diffusion" and cfg.sample and not cfg.samples:  # prompts fail before any model time
        cond, stop_id, prompt_files = resolve_conditioning(cfg.sampler, exported, cfg.tokenizer)
        conditioning = (cond, stop_id)
    set_inputs += prompt_files
    stage = StageRun(STAGE, out, config=cfg.artifact_config(), inputs=set_inputs, upstream=upstream,
                     tokenizer=exported.tokenizer_info, force=force, break_lock=break_lock)
    if stage.is_up_to_date():
        log(f"{out}: up to date")
        return out
    split = (cfg.test_split or default_test_split(exported.config)) if cfg.nelbo else None  # gone: fails here
    with stage.locked():  # before any model time: a second job on ``out`` stops here
        judge = load_judge(cfg.judge, cfg.device) if cfg.use_judge and exported.kind == "diffusion" else None
        results = {"model": str(Path(model).resolve()), "kind": exported.kind,
                   "kernel": exported.kernel.cfg.name if exported.kernel is not None else None,
                   "judge": judge.name if judge else None, "training": exported.config.get("training"),
                   "training_curve": training_curve(Path(model))}
        results.update(_likelihoods(cfg, exported, split, log))
        neighbors = exported.tables.neighbors if exported.tables is not None else None  # loaded once, by load_export
        rows, point_samples = [], {}
        if exported.kind == "diffusion" and cfg.sample:
            if cfg.samples:
                rows, point_samples = _given_samples(cfg, judge, neighbors)
            else:
                rows, point_samples = _sweep(exported, cfg, judge, neighbors, log, conditioning)
        with stage as tmp:
            _write_outputs(tmp, results, rows, point_samples)
    log(f"{out}: report at {out / 'report.md'}")
    return out


def _likelihoods(cfg: EvaluateConfig, exported, split: Path | None, log) -> dict:
    """``nelbo`` (the test split) and ``eval_sets`` (one entry per --eval-set) of results.json."""
    from pipeline.evaluation.eval_sets import load_eval_set
    from pipeline.evaluation.nelbo import evaluate_nelbo, read_test_sequences

    pad_id = exported.tokenizer_info.get("special_ids", {}).get("pad")
    # every eval set is read (and tokenised) first: a bad source fails before any model time is spent
    set_sequences = {spec.name: load_eval_set(spec, exported.config, exported.tokenizer_info,
                                              cfg.max_test_sequences) for spec in cfg.eval_sets}

    counts = training_counts(exported.config)  # the unigram reference: the export's training data

    baseline = load_baseline(cfg, exported) if cfg.baseline else None  # a bad one fails before model time

    def score(seqs, desc, model=exported, unigram=counts):
        return evaluate_nelbo(model, seqs, pad_id, cfg.eval_batch_size, cfg.t_draws, cfg.nelbo_steps,
                              cfg.nelbo_seed, progress=cfg.progress, bound=cfg.bound, desc=desc,
                              t_sampling=cfg.t_sampling, unigram_counts=unigram)

    out = {}
    if cfg.nelbo:
        if split is None and not cfg.eval_sets:
            raise ConfigError("no test split: pass --test-split, --eval-set or --no-nelbo "
                              "(the export names no preprocessed data)")
        if split is not None:
            seqs = read_test_sequences(split, cfg.max_test_sequences)
            out["nelbo"] = score(seqs, "test NELBO")
            if cfg.frequency_floor and counts is not None and floor_applies(exported):
                floor = score(seqs, "frequency floor", frequency_export(exported, counts), None)
                out["nelbo"]["unigram"]["frequency_floor"] = f = floor_comparison(out["nelbo"], floor)
                log(f"frequency floor ({f['bound']}): {f['nats_per_token']:.4f} nats/token, slack "
                    f"{f['slack']:+.4f} over the unigram cross-entropy; the model is {f['margin_nats']:+.4f} below it")
            if baseline is not None:
                theirs = score(seqs, "baseline NELBO", baseline, None)
                out["baseline"] = baseline_comparison(cfg.baseline, baseline, out["nelbo"], theirs)
                se = out["baseline"]["difference_stderr"]
                log(f"baseline {cfg.baseline}: {theirs['nats_per_token']:.4f} nats/token; difference "
                    f"{out['baseline']['difference']:+.4f}" + (f" ± {se:.4f}" if se is not None else ""))
            out["nelbo"].pop("per_sequence")
        elif baseline is not None:
            raise ConfigError("--baseline is scored on the test split: pass --test-split (the export names no "
                              "preprocessed data)")
    if cfg.eval_sets:
        out["eval_sets"] = {}
        for spec in cfg.eval_sets:
            r = score(set_sequences.pop(spec.name), f"{spec.name} NELBO")
            r.pop("per_sequence")
            out["eval_sets"][spec.name] = {
                **{k: r[k] for k in ("nats_per_token", "perplexity", "bits_per_token", "bound", "tokens", "stderr",
                                     "sequences", "candidates", "unigram") if k in r},
                "source": spec.source, "detokenizer": spec.detokenizer}
            log(f"{spec.name}: {r['tokens']} tokens, {r['nats_per_token']:.4f} nats/token, "
                f"PPL <= {r['perplexity']:.2f}")
    return out


def load_baseline(cfg: EvaluateConfig, exported):
    """The --baseline export, refused with one line when its tokens are not the model's."""
    from pipeline.common.export_artifact import load_export

    baseline = load_export(cfg.baseline, device=cfg.device)
    ours, theirs = exported.tokenizer_info.get("identity"), baseline.tokenizer_info.get("identity")
    if ours != theirs:
        raise ConfigError(f"--baseline {cfg.baseline}: its tokenizer is not the model's ({theirs} vs {ours}): "
                          "the two bounds would score different tokens")
    return baseline


def baseline_comparison(path: str, baseline, ours: dict, theirs: dict) -> dict:
    """results.json ``baseline``: its bound on the same sequences, and the paired difference (ours - its)."""
    from pipeline.evaluation.standard_errors import paired_difference_stderr

    difference = ours["nats_per_token"] - theirs["nats_per_token"]
    se = paired_difference_stderr(*ours["per_sequence"], *theirs["per_sequence"])
    return {"model": str(Path(path).resolve()), "kind": baseline.kind,
            "kernel": baseline.kernel.cfg.name if baseline.kernel is not None else None,
            **{k: theirs[k] for k in ("bound", "nats_per_token", "stderr", "stderr_sequences", "tokens",
                                      "perplexity")},
            "difference": difference, "difference_stderr": se,
            "difference_stderrs": difference / se if se else None}


def _given_samples(cfg: EvaluateConfig, judge, neighbors) -> tuple[list[dict], dict]:
    """The one sweep row of --samples DIR (its records' own config), and its records."""
    records = read_samples(Path(cfg.samples))
    sampled = records[0]["config"] if records else {}
    penalty = sampled.get("penalty", {})
    row = {"steps": sampled.get("steps"), "lambda_freq": penalty.get("lambda_freq", 0.0),
           "lambda_sem": penalty.get("lambda_sem", 0.0), "num_samples": len(records),
           **evaluate_point(records, judge, neighbors, cfg)}
    return [row], {"given": records}


def _unigram_entropy(results: dict) -> float | None:
    return ((results.get("nelbo") or {}).get("unigram") or {}).get("train_entropy")


def _write_outputs(tmp: Path, results: dict, rows: list[dict], point_samples: dict) -> None:
    """sweep.csv, the plots, samples/*.jsonl, results.json and report.md into the stage's temporary dir."""
    plots = []
    if rows:
        write_sweep_csv(rows, tmp / "sweep.csv")
        plot_entropy_histogram(rows[0]["entropy_per_sample"], tmp / "entropy_hist.png")
        plots.append("entropy_hist.png")
        if len({r["steps"] for r in rows}) > 1:
            plot_sweep(rows, tmp / "sweep_steps.png")
            plots.append("sweep_steps.png")
        (tmp / "samples").mkdir()
        for name, records in point_samples.items():
            with open(tmp / "samples" / f"{name}.jsonl", "w") as fh:
                keep = ("index", "ids", "text", "prompt", "infill", "length", "stopped_at_eos", "stopped_at_entropy")
                fh.writelines(json.dumps({k: r[k] for k in keep if k in r}) + "\n" for r in records)
    if results.get("training_curve"):
        plot_training_curve(results["training_curve"], _unigram_entropy(results), tmp / "learning_curve.png")
        plots.append("learning_curve.png")
    results["sweep"] = rows
    results["plots"] = plots
    first = next(iter(point_samples.values()), [])
    results["examples"] = [r["text"] for r in first[:3]]
    results["max_sample_len"] = max((len(r["ids"]) for recs in point_samples.values() for r in recs), default=0)
    write_report(tmp, results)

"""Bad configurations, fuzzed: seeded random mutations of the preset YAMLs in configs/ and of every stage's
CLI flags (wrong types, negatives, zero, unknown keys, missing files, bad enum values, empty strings)
each either parse or stop with the project's user error (exit status 2, one line, or argparse's usage
error); none may end in a raw traceback (TypeError, KeyError, AttributeError, ZeroDivisionError, ...).

Every stage stops before its heavy work: its library function is replaced by the config checks that
run before any data is touched (training), or its upstream artifact does not exist.
"""
from __future__ import annotations

import random
import traceback
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SEED = 20240611
CLI_BAD = ["-1", "0", "", " ", "abc", "1.5", "-0.5", "1e309", "nan", "inf", "-inf", "99999999999999999999",
           "None", "[1, 2]", "{a: 1}", "true", "/nonexistent/file", "-", "0x10", "1,2", "a=b", "#"]
INT_BAD = ["-1", "0", "-7", "99999999999", "2147483648", "1"]
FLOAT_BAD = ["nan", "inf", "-inf", "1e309", "-0.5", "1e-30", "2", "0.0"]
STR_BAD = ["", " ", "bogus", "/nonexistent/dir", "[MASK]", "a=b", "x#y", "none"]
YAML_BAD = [-1, 0, "", "abc", 1.5, -0.5, float("inf"), float("nan"), 10 ** 20, None, [1, 2], {"a": 1}, True,
            "1e-3x", [], {}, "null", -(10 ** 9)]
BROKEN_YAML = ["[1, 2]", "just a string", "lr: [", "a: 1\n b: 2", "- lr: 1", "{lr: }", "!!python/object:os.system {}",
               "model_args: 3", "kernel_args: [1]", "lr: 1e-3x", "betas: [0.9]", "seed: .nan"]
BAD_DS_JSON = ["[1]", "{}", '{"gradient_clipping": 1, "fp16": true}',
               '{"gradient_clipping": 1, "zero_optimization": 3}', '{"gradient_clipping": 1, "fp16": {"enabled": 1}}',
               '{"gradient_clipping": 1, "optimizer": "adam"}']
ODD_YAML = ["", "lr: 1\nlr: 2", "# only a comment"]  # valid: defaults, the last value, defaults


# --------------------------------------------------------------------------- running one case
def run_case(main, argv: list[str], failures: list[str]) -> None:
    """main(argv) may return, or exit 2 (a user error); anything else is a crash the fuzz reports."""
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code not in (0, 2, None):
            failures.append(f"{argv}: exit {exc.code}")
    except Exception:  # noqa: BLE001 - what the fuzz is looking for
        failures.append(f"{argv}:\n{traceback.format_exc(limit=-3)}")


def bad_value(rng: random.Random, valid: str) -> str:
    """Mostly of the flag's own type (so the stage's checks run, not only argparse's), sometimes not."""
    if rng.random() < 0.25:
        return rng.choice(CLI_BAD)
    if valid.lstrip("-").isdigit():
        return rng.choice(INT_BAD)
    if valid.replace(".", "", 1).replace(",", "").isdigit():
        return rng.choice(INT_BAD + FLOAT_BAD)
    return rng.choice(STR_BAD)


def mutate_flags(rng: random.Random, base: list[str], optional: dict[str, str], required: list[str]) -> list[str]:
    """A valid argv (base + some valid optional flags) with one or two mutations."""
    argv = list(base)
    for flag in rng.sample(sorted(optional), k=min(len(optional), rng.randint(0, 3))):
        argv += [flag] if optional[flag] == "" else [flag, optional[flag]]
    valued = {f: v for f, v in optional.items() if v != ""}
    for _ in range(rng.randint(1, 2)):
        kind = rng.random()
        if kind < 0.8:  # a bad value for a flag that takes one
            flag = rng.choice(sorted(valued))
            argv += [flag, bad_value(rng, valued[flag])]
        elif kind < 0.9 and required:  # a required flag dropped
            flag = rng.choice(required)
            if flag in argv:
                i = argv.index(flag)
                del argv[i:i + (2 if flag.startswith("--") else 1)]
        else:
            argv += ["--no-such-flag", rng.choice(CLI_BAD)]
    return argv


# --------------------------------------------------------------------------- training configs
def mutate_yaml(rng: random.Random, preset: dict) -> str:
    from dataclasses import fields

    from pipeline.core.kernels import KernelConfig
    from pipeline.core.model import ModelConfig
    from pipeline.training.config import TrainConfig

    if rng.random() < 0.1:
        return rng.choice(BROKEN_YAML + ODD_YAML)
    cfg = dict(preset)
    keys = [f.name for f in fields(TrainConfig)]
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.45:
            cfg[rng.choice(keys)] = rng.choice(YAML_BAD)
        elif kind < 0.55 and cfg:
            cfg.pop(rng.choice(sorted(cfg)))
        elif kind < 0.62:
            cfg[rng.choice(["lrr", "model_arg", "Kernel", "max-steps"])] = 1
        elif kind < 0.8:
            cfg["model_args"] = {rng.choice([f.name for f in fields(ModelConfig)] + ["n_layers"]): rng.choice(YAML_BAD)}
        elif kind < 0.95:
            cfg["kernel_args"] = {rng.choice([f.name for f in fields(KernelConfig)] + ["kmax"]): rng.choice(YAML_BAD)}
        else:
            cfg[rng.choice(["model", "kernel", "loss", "lr_schedule", "precision", "val_bound"])] = rng.choice(
                ["nope", "", "MASK", 3])
    return yaml.safe_dump(cfg)


def training_overrides(rng: random.Random) -> list[str]:
    pool = ["noequals", "=5", "lr=", "lr=[", "betas=[0.9]", "betas=abc", "model_args.n_layer.x=1", "model_args=3",
            "kernel_args.k_max=0", "kernel_args.alpha_eps=abc", "micro_batch=3", "global_batch=0",
            "max_steps=-5", "seq_len=abc", "num_workers=-1", "model_args.n_head=5", "kernel=semdlm_plus",
            "kernel_args.k_max=1.5", "precision=fp16", "lr=nan", "ema_decay=1", "keep_last=true"]
    return rng.sample(pool, k=rng.randint(0, 2))


def stub_training(cfg, ds_config: str, **_) -> int:
    """What pipeline/train.py checks of a config before DeepSpeed starts (upstream sizes made up)."""
    from pipeline.training.ds_config import load_ds_config, patch_ds_config
    from pipeline.training.launch import check_runnable

    check_runnable(cfg)
    vocab, seq_len = 30522, 32
    cfg.identity(vocab, seq_len, "vocab-sha256:x")
    cfg.model_config(vocab, seq_len)
    patch_ds_config(load_ds_config(ds_config), cfg, 1, cuda_available=False)
    return 0


# --------------------------------------------------------------------------- the cases
def cases(tmp: Path, rng: random.Random):
    """(main, argv) pairs: about 200 in all."""
    from neighbor_index import __main__ as neighbor_cli
    from pipeline import diagnose, evaluate, export, rs_harness, sample, train
    from preprocess import __main__ as preprocess_cli

    corpus = tmp / "train.txt"
    corpus.write_text("the cat sat on the mat .\n" * 20)
    missing = str(tmp / "missing")
    ds_configs = [str(REPO / "ds_configs" / "zero3.json"), missing, str(corpus)]
    for i, text in enumerate(BAD_DS_JSON):
        ds_configs.append(str(tmp / f"ds{i}.json"))
        Path(ds_configs[-1]).write_text(text)
    presets = sorted((REPO / "configs").glob("*.yaml"))
    for i in range(70):
        preset = rng.choice(presets)
        path = tmp / f"cfg{i}.yaml"
        path.write_text(mutate_yaml(rng, yaml.safe_load(preset.read_text())))
        argv = ["--config", str(path), "--run-dir", str(tmp / "run"), "--preprocessed", missing,
                *training_overrides(rng)]
        if rng.random() < 0.15:
            argv += ["--ds_config", rng.choice(ds_configs + [str(preset)])]
        if rng.random() < 0.1:
            argv += ["--max-steps", rng.choice(CLI_BAD)]
        yield train.main, argv

    base = ["--input", str(corpus), "--out", str(tmp / "pre"), "--mode", "lm1b", "--no-progress"]
    optional = {"--seq-len": "32", "--valid-fraction": "0.1", "--test-fraction": "0.1", "--workers": "2",
                "--worker-kind": "process", "--shard-index": "1", "--num-shards": "2", "--split-seed": "3",
                "--shard-size-limit": "1000000", "--compression": "none", "--text-field": "body",
                "--separator": "[SEP]", "--valid-input": str(corpus), "--tokenizer": "default", "--wrap": ""}
    for _ in range(30):
        yield preprocess_cli.main, mutate_flags(rng, base, optional, ["--input", "--out", "--mode"])

    base = ["--preprocessed", missing, "--out", str(tmp / "nn"), "--no-progress"]
    optional = {"--k-max": "8", "--tau": "0.5", "--min-count": "2", "--assoc-k": "4", "--assoc-min-sim": "0.1",
                "--index": "ivf", "--ivf-nlist": "4", "--ivf-nprobe": "2", "--hnsw-m": "8", "--hnsw-ef-search": "16",
                "--recall-sample": "10", "--batch-size": "8", "--threads": "1", "--device": "cpu", "--seed": "1",
                "--embeddings-from-model": missing, "--embedding-key": "emb"}
    for _ in range(25):
        yield neighbor_cli.main, mutate_flags(rng, base, optional, ["--preprocessed", "--out"])

    sampler = {"--method": "blockwise", "--steps": "8", "--num-samples": "4", "--batch-size": "2", "--seq-len": "16",
               "--strides": "2", "--seed": "1", "--top-k": "5", "--top-p": "0.9", "--rho": "1",
               "--hazard": "integrated",
               "--freeze-threshold": "0.9", "--schedule": "tc", "--remask": "remdm_cap", "--remask-eta": "0.1",
               "--corrector-steps": "2", "--corrector-step-size": "0.5", "--corrector-frac": "0.2",
               "--lambda-freq": "1", "--lambda-sem": "0.5", "--window": "4", "--window-side": "both",
               "--prompt": "the cat", "--infill": "the [MASK]*3 sat", "--stop-at-eos": "", "--device": "cpu",
               "--quiet": "", "--final-argmax": "", "--no-cache": ""}
    for _ in range(30):
        yield sample.main, mutate_flags(rng, ["--model", missing, "--out", str(tmp / "s")], sampler,
                                        ["--model", "--out"])
    grid = {**sampler, "--steps": "8,16", "--lambda-freq": "0,1", "--lambda-sem": "0,0.5", "--judge": "none",
            "--judge-batch-size": "2", "--max-test-sequences": "3", "--eval-set": f"lm1b={corpus}#detok=lm1b",
            "--eval-batch-size": "2", "--t-draws": "1", "--bound": "tstep", "--nelbo-steps": "10",
            "--nelbo-seed": "2", "--test-split": missing, "--samples": missing, "--no-samples": "", "--no-nelbo": ""}
    for _ in range(30):
        yield evaluate.main, mutate_flags(rng, ["--model", missing, "--out", str(tmp / "e")], grid,
                                          ["--model", "--out"])

    for _ in range(5):
        yield export.main, mutate_flags(rng, [missing, "--out", str(tmp / "x")], {"--tag": "global_step4",
                                        "--raw-weights": "", "--force": ""}, [missing, "--out"])
    optional = {"--kernels": "mask,semdlm", "--num-t": "5", "--eps": "0.01", "--method": "mc", "--mc-samples": "10",
                "--mask-id": "103", "--seed": "1"}
    for _ in range(10):
        yield diagnose.main, mutate_flags(rng, ["--neighbors", missing, "--out", str(tmp / "d")], optional,
                                          ["--neighbors", "--out"])
    optional = {"--q": "5", "--n": "4", "--k": "2", "--iterations": "1,2", "--schedules": "fixed,tc",
                "--exact-limit": "100", "--mc-samples": "10", "--seed": "1"}
    for _ in range(10):
        yield rs_harness.main, mutate_flags(rng, ["--out", str(tmp / "rs")], optional, ["--out"])


def install_stubs(setattr_) -> None:
    """Each stage's library function replaced by its config checks (``setattr_``: monkeypatch.setattr)."""
    from pipeline import evaluate, rs_harness, sample, train
    from preprocess import __main__ as preprocess_cli

    setattr_(train, "train", stub_training)
    setattr_(preprocess_cli, "run_preprocess", stub_preprocess)
    setattr_(sample, "run_sample", stub_sampling)
    setattr_(evaluate, "run_evaluate", stub_sampling)
    setattr_(rs_harness, "run_rs_harness", lambda cfg, out, **kw: cfg.artifact_config())


def test_bad_configurations_are_user_errors_never_tracebacks(tmp_path, monkeypatch, capsys):
    install_stubs(monkeypatch.setattr)
    rng = random.Random(SEED)
    failures: list[str] = []
    count = 0
    for main, argv in cases(tmp_path, rng):
        run_case(main, argv, failures)
        count += 1
    err = capsys.readouterr().err
    assert count >= 200
    assert not failures, f"{len(failures)} of {count} configurations crashed:\n" + "\n".join(failures)
    assert "Traceback" not in err


def stub_preprocess(cfg, out, force=False, break_lock=False) -> None:
    """run_preprocess up to the tokenizer: the inputs resolved, the tokenizer found."""
    from pipeline.common.hf_assets import load_tokenizer_spec
    from preprocess.readers import resolve_inputs

    for specs in cfg.inputs.values():
        resolve_inputs(specs)
    if cfg.tokenizer != "default":
        load_tokenizer_spec(cfg.tokenizer)


def stub_sampling(cfg, model, out, force=False, break_lock=False) -> None:
    """run_sample / run_evaluate up to the model: the prompt or infill template tokenised (default
    tokenizer), the sampler of every point resolved for the mask and a semantic kernel."""
    import itertools

    from pipeline.evaluation.stage import EvaluateConfig
    from pipeline.sampling.conditioning import load_conditioning

    options = cfg.sampler
    cond = load_conditioning(options.prompt, options.infill, {}, {}, None)
    grid = isinstance(cfg, EvaluateConfig)
    points = itertools.product(cfg.steps, cfg.lambda_freq, cfg.lambda_sem) if grid else [
        (cfg.steps, cfg.lambda_freq, cfg.lambda_sem)]
    for steps, lambda_freq, lambda_sem in points:
        for kernel in ("mask", "semdlm_plus"):
            sampler = options.resolve(kernel, cond.length if cond and cond.kind == "infill" else 32, steps,
                                      lambda_freq, lambda_sem)
            if cond is not None:
                cond.template(sampler.seq_len)
    if grid:
        cfg.freshness_sources()


@pytest.mark.parametrize("text", BROKEN_YAML)
def test_broken_yaml_is_a_user_error(text, tmp_path):
    from pipeline.training.config import load_config

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError):
        load_config(path)


@pytest.mark.parametrize("text,overrides", [
    ("!!python/object:os.system {}", []),                     # a YAML tag safe_load refuses
    ("model: tiny\nmodel_args: {n_layer: {a: 1}}", []),       # a mapping where an int belongs
    ("model: tiny\nmodel_args: {dropout: abc}", []),
    ("model: tiny\nmax_steps: .inf", []),                     # infinity for an int
    ("model: tiny", ["model_args.n_layer=.inf"]),
    ("model: tiny", ["lr=["]),                                # an override that is not YAML
    ("model: tiny", ["kernel_args.name=mask"]),               # the kernel's name is `kernel`
    ("model: tiny", ["kernel_args.alpha_eps=abc"]),
    ("model: tiny", ["betas=[abc, 1]"]),
    ("model: tiny", ["model_args..n_layer=2"]),
])
def test_crashes_the_fuzz_found_are_user_errors(text, overrides, tmp_path):
    from pipeline.common.artifacts import ConfigError
    from pipeline.training.config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        cfg = load_config(path, overrides)
        cfg.model_config(30522, 32)


@pytest.mark.parametrize("text", BAD_DS_JSON)
def test_malformed_deepspeed_configs_are_user_errors(text, tmp_path):
    from pipeline.training.ds_config import load_ds_config

    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(ValueError):
        load_ds_config(path)


@pytest.mark.parametrize("device", ["bogus", "", "cuda:-1", "x#y"])
def test_bad_devices_are_user_errors(device):
    from pipeline.common.artifacts import ConfigError
    from pipeline.evaluation.stage import EvaluateConfig
    from pipeline.sampling.stage import SampleConfig

    for make in (SampleConfig, EvaluateConfig):
        with pytest.raises(ConfigError, match="--device must be a torch device"):
            make(device=device)

"""Flags declared on the config dataclasses (pipeline/common/cli_fields.py): the generic builder on a toy
config, and the sampler flags of ``pipeline.sample`` / ``pipeline.evaluate`` generated from
SampleConfig / SamplerOptions (every field has a flag and help text; args -> config; the sweep)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from pipeline.common.artifacts import ConfigError
from pipeline.common.cli_fields import (
    add_config_args,
    check_choices,
    cli_field,
    cli_spec,
    config_from_args,
    flag_of,
)
from pipeline.common.devices import default_device
from pipeline.sampling.base import SamplerConfig
from pipeline.sampling.penalty import PenaltyConfig
from pipeline.sampling.stage import SampleConfig, SamplerOptions


# --------------------------------------------------------------------------- the generic builder
@dataclass(frozen=True)
class Inner:
    mode: str = cli_field("a", choices=("a", "b"), help="a mode")
    text: str | None = cli_field(None, exclusive="source", metavar="TEXT", help="a text")
    path: str | None = cli_field(None, exclusive="source", help="a file")


@dataclass(frozen=True)
class Toy:
    name: str = cli_field(help="required: no default")
    inner: Inner = Inner()
    count: int = cli_field(3, sweep=True, help="a count")
    rate: float | None = cli_field(None, help="a rate")
    ids: tuple[int, ...] | None = cli_field(None, help="comma list, empty: None")
    names: tuple[str, ...] = cli_field(("x", "y"), help="comma list")
    verbose: bool = cli_field(False, help="switch on")
    cache: bool = cli_field(True, flag="--no-cache", help="switch off")
    chunk: int = 7  # no flag


def _toy(argv, grid=False):
    p = argparse.ArgumentParser()
    add_config_args(p, Toy, grid=grid)
    return p, config_from_args(Toy, p.parse_args(argv))


def test_toy_defaults_and_flag_names():
    p, cfg = _toy(["--name", "n"])
    assert cfg == Toy(name="n")
    flags = [a.option_strings[0] for a in p._actions if a.option_strings][1:]  # without -h
    assert flags == ["--name", "--mode", "--text", "--path", "--count", "--rate", "--ids", "--names", "--verbose",
                     "--no-cache"]


def test_toy_round_trip():
    _, cfg = _toy(["--name", "n", "--mode", "b", "--path", "f", "--count", "5", "--rate", "0.5", "--ids", "1, 2,,3",
                   "--names", "z", "--verbose", "--no-cache"])
    assert cfg == Toy(name="n", inner=Inner(mode="b", path="f"), count=5, rate=0.5, ids=(1, 2, 3), names=("z",),
                      verbose=True, cache=False)
    assert _toy(["--name", "n", "--ids", ""])[1].ids is None and _toy(["--name", "n", "--names", ""])[1].names == ()


@pytest.mark.parametrize("argv", [[], ["--name", "n", "--mode", "c"], ["--name", "n", "--text", "t", "--path", "f"],
                                  ["--name", "n", "--count", "1,2"], ["--name", "n", "--ids", "1,x"]])
def test_toy_bad_flags_are_argparse_errors(argv):
    with pytest.raises(SystemExit) as exc:
        _toy(argv)
    assert exc.value.code == 2


def test_toy_grid_takes_comma_lists_of_sweep_fields_only():
    p, _ = _toy(["--name", "n"], grid=True)
    args = p.parse_args(["--name", "n"])
    assert args.count == [3]
    assert p.parse_args(["--name", "n", "--count", "1,2"]).count == [1, 2]
    assert next(a for a in p._actions if a.dest == "count").help == "a count (comma list)"
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "n", "--rate", "0.1,0.2"])


def test_check_choices_and_bad_declarations():
    with pytest.raises(ConfigError, match=r"--mode must be one of \('a', 'b'\), got 'c'"):
        check_choices(Inner(mode="c"))
    with pytest.raises(ValueError, match="help"):
        cli_field(1, help="")

    @dataclass(frozen=True)
    class NoOffSwitch:
        on: bool = cli_field(True, help="a bool on by default needs a flag that turns it off")

    with pytest.raises(TypeError, match="on"):
        add_config_args(argparse.ArgumentParser(), NoOffSwitch)


# --------------------------------------------------------------------------- the sampler flags
def _sample_parser():
    from pipeline.sample import build_parser

    return build_parser()


def _evaluate_parser():
    from pipeline.evaluate import build_parser

    return build_parser()


def test_every_sampler_setting_has_one_flag_with_help():
    """SamplerOptions and SampleConfig declare a flag with help for every field; every setting of the
    resolved SamplerConfig (and its PenaltyConfig) is one of them, under the same name."""
    declared = [f for cls in (SamplerOptions, SampleConfig) for f in fields(cls) if f.name != "sampler"]
    assert all(cli_spec(f) is not None and cli_spec(f).help for f in declared), \
        [f.name for f in declared if cli_spec(f) is None]
    for build in (_sample_parser, _evaluate_parser):
        actions = {a.dest: a for a in build()._actions}
        for f in declared:
            assert actions[f.name].option_strings == [flag_of(f)] and actions[f.name].help
    resolved = {f.name for cls in (SamplerConfig, PenaltyConfig) for f in fields(cls)} - {"penalty"}
    assert resolved <= {f.name for f in declared}


def test_sample_args_round_trip_to_the_config():
    from pipeline.sampling.cli_args import sampler_kwargs

    p = _sample_parser()
    base = ["--model", "m", "--out", "o"]
    assert SampleConfig(**sampler_kwargs(p.parse_args(base))) == SampleConfig(device=default_device())
    argv = base + ["--method", "blockwise", "--steps", "8", "--num-samples", "4", "--batch-size", "2",
                   "--seq-len", "16", "--strides", "4", "--seed", "1", "--top-k", "5", "--top-p", "0.8",
                   "--rho", "2", "--freeze-threshold", "0.9", "--schedule", "tc", "--remask", "remdm_cap",
                   "--remask-eta", "0.1", "--corrector-steps", "2", "--corrector-step-size", "0.5",
                   "--corrector-frac", "0.2", "--hazard", "frozen", "--final-argmax", "--no-cache",
                   "--lambda-freq", "1", "--lambda-sem", "0.5", "--window", "4", "--window-side", "both",
                   "--prompt", "the cat", "--stop-at-eos", "--tokenizer", "tok", "--device", "cpu", "--quiet"]
    options = SamplerOptions(method="blockwise", seq_len=16, strides=4, top_k=5, top_p=0.8, rho=2.0,
                             freeze_threshold=0.9, schedule="tc", remask="remdm_cap", remask_eta=0.1,
                             corrector_steps=2, corrector_step_size=0.5, corrector_frac=0.2, hazard="frozen",
                             final_argmax=True, cache=False, window=4, window_side="both", prompt="the cat",
                             stop_at_eos=True)
    assert SampleConfig(**sampler_kwargs(p.parse_args(argv))) == SampleConfig(
        sampler=options, steps=8, lambda_freq=1.0, lambda_sem=0.5, num_samples=4, batch_size=2, seed=1,
        tokenizer="tok", device="cpu", progress=False)
    infill = sampler_kwargs(p.parse_args(base + ["--infill", "a [MASK] b"]))["sampler"]
    assert infill == SamplerOptions(infill="a [MASK] b") and infill.strides == 1
    with pytest.raises(SystemExit):
        p.parse_args(base + ["--prompt", "a", "--infill", "a [MASK]"])


def test_evaluate_sweeps_steps_and_penalty_weights():
    from pipeline.evaluation.stage import EvaluateConfig
    from pipeline.sampling.cli_args import sampler_kwargs

    p = _evaluate_parser()
    base = ["--model", "m", "--out", "o", "--device", "cpu"]
    kwargs = sampler_kwargs(p.parse_args(base))
    assert (kwargs["steps"], kwargs["lambda_freq"], kwargs["lambda_sem"]) == ([128], [None], [None])
    cfg = EvaluateConfig(**sampler_kwargs(p.parse_args(
        base + ["--steps", "8,16", "--lambda-freq", "0, 1", "--lambda-sem", "0.5", "--window", "4"])))
    assert (cfg.steps, cfg.lambda_freq, cfg.lambda_sem) == ((8, 16), (0.0, 1.0), (0.5,))
    assert cfg.sampler == SamplerOptions(window=4)
    with pytest.raises(SystemExit):
        _sample_parser().parse_args(["--model", "m", "--out", "o", "--steps", "8,16"])  # no sweep in sample


# --------------------------------------------------------------------------- the research tools
def test_research_tool_flags_build_their_configs():
    from pipeline import diagnose, inspect_kernel, rs_harness
    from pipeline.research.diagnose import DiagnoseConfig
    from pipeline.research.inspect_kernel import InspectConfig
    from pipeline.research.rs_harness import RsHarnessConfig

    def build(cli, cls, argv):
        return config_from_args(cls, cli.build_parser().parse_args(argv))

    base = ["--neighbors", "n", "--out", "o"]
    assert build(diagnose, DiagnoseConfig, base) == DiagnoseConfig()
    assert build(diagnose, DiagnoseConfig, base + ["--kernels", "mask, semdlm", "--num-t", "5", "--eps", "0.01",
                                                   "--method", "mc", "--mc-samples", "10", "--mask-id", "3",
                                                   "--seed", "2"]) == DiagnoseConfig(
        kernels=("mask", "semdlm"), num_t=5, eps=0.01, method="mc", mc_samples=10, mask_id=3, seed=2)
    assert build(rs_harness, RsHarnessConfig, ["--out", "o"]) == RsHarnessConfig()
    assert build(rs_harness, RsHarnessConfig, ["--out", "o", "--iterations", ""]).iterations is None
    assert build(rs_harness, RsHarnessConfig, ["--out", "o", "--q", "5", "--n", "4", "--k", "2", "--iterations", "2,1",
                                               "--schedules", "fixed,tc", "--exact-limit", "100", "--mc-samples", "10",
                                               "--seed", "1"]) == RsHarnessConfig(
        q=5, n=4, k=2, iterations=(1, 2), schedules=("fixed", "tc"), exact_limit=100, mc_samples=10, seed=1)
    argv = ["--kernel", "mask", "--token", "1", "--t", "0.5"]
    assert build(inspect_kernel, InspectConfig, argv) == InspectConfig(kernel="mask", token="1", t=0.5)
    assert build(inspect_kernel, InspectConfig, argv + ["--samples", "5", "--top", "3", "--k-max", "4",
                                                        "--tokenizer", "x", "--vocab-size", "8", "--mask-id", "7",
                                                        "--seed", "3"]) == InspectConfig(
        kernel="mask", token="1", t=0.5, samples=5, top=3, k_max=4, tokenizer="x", vocab_size=8, mask_id=7, seed=3)
    with pytest.raises(SystemExit):
        inspect_kernel.build_parser().parse_args(["--kernel", "mask", "--token", "1"])  # --t is required

"""The sampler flags shared by ``python -m pipeline.sample`` and ``python -m pipeline.evaluate``.

The flags are the fields of :class:`~pipeline.sampling.stage.SampleConfig` and of its nested
:class:`~pipeline.sampling.stage.SamplerOptions`, each declared once there with its help text
(pipeline/common/cli_fields.py builds the argparse arguments from them): :func:`add_sampler_args`
adds them to a parser (``grid=True``: --steps, --lambda-freq and --lambda-sem take comma lists, the
evaluate sweep), :func:`sampler_kwargs` turns the parsed flags back into those fields.
"""
from __future__ import annotations

import argparse

from pipeline.common.cli_fields import add_config_args, config_kwargs
from pipeline.common.locks import add_break_lock_argument

from .stage import SampleConfig


def add_sampler_args(p: argparse.ArgumentParser, grid: bool = False) -> None:
    """Sampler options; with ``grid`` --steps/--lambda-freq/--lambda-sem take comma lists (sweeps)."""
    add_config_args(p, SampleConfig, grid=grid)
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    add_break_lock_argument(p)


def sampler_kwargs(args: argparse.Namespace) -> dict:
    """SampleConfig's fields (``sampler``: the SamplerOptions, then steps, the Eq 23 weights, ...,
    progress) of parsed :func:`add_sampler_args` flags; EvaluateConfig has fields of the same names
    (with ``grid``, steps and the weights are lists)."""
    return config_kwargs(SampleConfig, args)

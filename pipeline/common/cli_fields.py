"""One declaration per CLI setting: a config dataclass field carries its flag's help text (and, where
needed, the flag's spelling, choices and metavar); the stage CLIs build their argparse arguments from
the fields and the config back from the parsed arguments, so a new setting is one field.

    @dataclass(frozen=True)
    class Config:
        steps: int = cli_field(128, help="total denoising steps", sweep=True)
        cache: bool = cli_field(True, help="never reuse logits", flag="--no-cache")
        chunk: int = 4096  # a plain field: no flag

    add_config_args(parser, Config)                      # --steps STEPS, --no-cache
    cfg = config_from_args(Config, parser.parse_args(argv))

How :func:`add_config_args` turns a field into a flag:

* the flag is ``--`` + the field name with ``_`` -> ``-`` unless ``flag`` names another; the parsed
  value is stored under the field name;
* ``bool``: a switch; ``store_true`` where the field defaults to False, and where it defaults to
  True a ``flag`` that turns it off (``--no-cache``, ``--quiet``: ``store_false``);
* ``X`` or ``X | None`` (int, float, str): ``type=X``; ``tuple[X, ...]``: a comma list (blank items
  dropped; an empty list is None where the field may be None);
* the default is the field's; ``cli_default`` (a callable, called when the parser is built) gives
  the flag another one (the device probed on this machine); a field without a default is required;
* ``sweep=True``: with ``grid=True`` the flag takes a comma list, default ``[the default]`` (the
  sweep of ``python -m pipeline.evaluate`` over --steps / --lambda-freq / --lambda-sem);
* fields with the same ``exclusive`` name form a mutually exclusive group;
* a field without ``cli_field`` has no flag, except that a field typed with a config dataclass
  contributes that class's flags (and :func:`config_kwargs` builds it back from them).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING
from typing import Any

from .errors import ConfigError

_KEY = "cli"


@dataclasses.dataclass(frozen=True)
class CliSpec:
    """The flag of one config field (the ``metadata["cli"]`` of :func:`cli_field`)."""

    help: str
    flag: str | None = None  # None: --field-name
    choices: tuple | None = None
    metavar: str | None = None
    exclusive: str | None = None  # name of a mutually exclusive group
    sweep: bool = False  # a comma list under add_config_args(grid=True)
    cli_default: Callable[[], Any] | None = None  # the flag's default, when it is not the field's


def cli_field(default: Any = MISSING, *, help: str, flag: str | None = None, choices=None,
              metavar: str | None = None, exclusive: str | None = None, sweep: bool = False,
              cli_default: Callable[[], Any] | None = None, default_factory: Any = MISSING) -> Any:
    """A dataclass field with a command-line flag (see the module docstring)."""
    if not help:
        raise ValueError("a cli_field needs its help text")
    spec = CliSpec(help, flag, None if choices is None else tuple(choices), metavar, exclusive, sweep, cli_default)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: spec})


def cli_spec(f: dataclasses.Field) -> CliSpec | None:
    return f.metadata.get(_KEY)


def flag_of(f: dataclasses.Field) -> str:
    spec = cli_spec(f)
    return (spec and spec.flag) or "--" + f.name.replace("_", "-")


def comma_list(kind: Callable, container: type = tuple, none_if_empty: bool = False) -> Callable[[str], Any]:
    """An argparse ``type``: "1, 2,,3" -> container of kind(item), blank items dropped."""
    def parse(text: str):
        values = container(kind(v.strip()) for v in str(text).split(",") if v.strip())
        return None if none_if_empty and not values else values
    parse.__name__ = f"comma-separated {getattr(kind, '__name__', 'value')}"  # argparse's "invalid ... value"
    return parse


def _unwrap(hint) -> tuple[Any, bool]:
    """(X, whether None is allowed) of X or X | None / Optional[X]."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _nested(hint) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _default(f: dataclasses.Field, spec: CliSpec) -> Any:
    if spec.cli_default is not None:
        return spec.cli_default()
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def _argument(f: dataclasses.Field, hint, grid: bool) -> dict:
    """The add_argument keywords of field ``f`` (type ``hint``)."""
    spec = cli_spec(f)
    base, optional = _unwrap(hint)
    default = _default(f, spec)
    kw: dict[str, Any] = {"dest": f.name, "help": spec.help}
    if base is bool:
        if default is not False and spec.flag is None:
            raise TypeError(f"{f.name}: a bool field that defaults to {default!r} needs a flag that sets it")
        return {**kw, "action": "store_false" if default else "store_true", "default": bool(default)}
    if default is MISSING:
        kw["required"] = True
    else:
        kw["default"] = default
    if grid and spec.sweep:
        kw.update(type=comma_list(base, list), help=f"{spec.help} (comma list)")
        if default is not MISSING:
            kw["default"] = [default]
    elif typing.get_origin(base) is tuple:
        kw["type"] = comma_list(typing.get_args(base)[0], tuple, none_if_empty=optional)
    else:
        kw["type"] = base
    kw.update({k: v for k, v in (("choices", spec.choices), ("metavar", spec.metavar)) if v is not None})
    return kw


def add_config_args(parser: argparse.ArgumentParser, cls: type, grid: bool = False, _groups: dict | None = None
                    ) -> None:
    """Add a flag for every :func:`cli_field` of the config dataclass ``cls`` (nested configs included), in
    field order; ``grid``: the ``sweep`` fields take comma lists."""
    groups = {} if _groups is None else _groups
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        spec = cli_spec(f)
        if spec is None:
            if _nested(hints[f.name]):
                add_config_args(parser, hints[f.name], grid, groups)
            continue
        target = parser
        if spec.exclusive is not None:
            if spec.exclusive not in groups:
                groups[spec.exclusive] = parser.add_mutually_exclusive_group()
            target = groups[spec.exclusive]
        target.add_argument(flag_of(f), **_argument(f, hints[f.name], grid))


def config_kwargs(cls: type, args: argparse.Namespace) -> dict:
    """The keyword arguments of ``cls`` that the flags of :func:`add_config_args` parsed into ``args``
    (nested configs built)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if cli_spec(f) is not None:
            kwargs[f.name] = getattr(args, f.name)
        elif _nested(hints[f.name]):
            nested = config_kwargs(hints[f.name], args)
            if nested:
                kwargs[f.name] = hints[f.name](**nested)
    return kwargs


def config_from_args(cls: type, args: argparse.Namespace, **extra):
    """``cls`` built from the parsed flags, plus ``extra`` fields that have none."""
    return cls(**config_kwargs(cls, args), **extra)


def check_choices(config) -> None:
    """ConfigError naming the first flag of ``config`` whose value (None aside) is not among its choices."""
    for f in dataclasses.fields(config):
        spec, value = cli_spec(f), getattr(config, f.name)
        if spec is not None and spec.choices is not None and value is not None and value not in spec.choices:
            raise ConfigError(f"{flag_of(f)} must be one of {spec.choices}, got {value!r}")

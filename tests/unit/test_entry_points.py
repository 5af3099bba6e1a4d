"""Every tool is ``python -m pipeline.<tool>`` and ``semdlm-<tool>``, listed once in the README's Tools table;
a library module run with ``python -m`` names its command instead of exiting 0 in silence."""
from __future__ import annotations

import configparser
import importlib
import re
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = sorted(p.stem for p in (REPO / "pipeline").glob("*.py") if p.stem != "__init__")
ALIASES = {"semdlm-neighbors": "pipeline.neighbor_index:main"}  # the stage's name before the pipeline.<tool> scheme


def _console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines if line.strip())


def test_every_tool_is_a_module_with_main_and_a_console_script():
    scripts = _console_scripts()
    expected = {f"semdlm-{t.replace('_', '-')}": f"pipeline.{t}:main" for t in TOOLS}
    assert scripts == {**expected, **ALIASES}
    for tool in TOOLS:
        source = (REPO / "pipeline" / f"{tool}.py").read_text(encoding="utf-8")
        assert re.search(r"^def main\(|^from \S+ import main$", source, re.M), tool
        assert 'if __name__ == "__main__":' in source, f"pipeline/{tool}.py cannot run as python -m"


def test_the_readme_lists_every_tool_once():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Tools"):readme.index("\n## ", readme.index("## Tools") + 1)]
    listed = re.findall(r"^\| `python -m pipeline\.(\w+)` \| `semdlm-([\w-]+)`", table, re.M)
    assert sorted(t for t, _ in listed) == TOOLS
    assert all(script == tool.replace("_", "-") for tool, script in listed)


@pytest.mark.parametrize("module", sorted(f"pipeline.research.{p.stem}" for p in (REPO / "pipeline" / "research")
                                          .glob("*.py") if p.stem in TOOLS))
def test_a_library_named_like_a_tool_points_at_it(module, capsys):
    with pytest.raises(SystemExit) as exc:
        runpy.run_module(module, run_name="__main__")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"the command is python -m pipeline.{module.rpartition('.')[2]}" in err and err.count("\n") == 1


def test_the_tools_answer_help(capsys):
    """The moved CLIs build their parsers (argparse exits 0 on --help and prints the usage with its prog)."""
    for tool in ("bound_check", "sampler_oracle", "t_profile", "model_size", "preprocess", "neighbor_index",
                 "study"):
        main = importlib.import_module(f"pipeline.{tool}").main
        with pytest.raises(SystemExit) as exc:
            main(["--help"])
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out

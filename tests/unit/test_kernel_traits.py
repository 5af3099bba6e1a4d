"""Kernels by trait: the pipeline outside the kernel modules reads KernelTraits, never a kernel's name.

The scan is on the source (like test_layers.py): a comparison of a kernel name (``== "mask"``,
``in ("semdlm", ...)``, a module-level tuple of names, ``.startswith("semdlm")``) against anything that
names a kernel fails, outside pipeline/core/kernel_config.py and pipeline/core/kernels.py.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.core.kernel_config import KERNEL_NAMES, PRESETS, TRAITS, KernelConfig, beta_of, traits_of

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("pipeline", "preprocess", "neighbor_index", "bench", "scripts")
KERNEL_MODULES = {Path("pipeline/core/kernel_config.py"), Path("pipeline/core/kernels.py")}


def _names_in(node: ast.AST, tuples: dict[str, set[str]]) -> set[str]:
    """The kernel names a comparison operand spells: a string, a literal collection of them, or a
    module-level name bound to such a collection."""
    if isinstance(node, ast.Constant) and node.value in KERNEL_NAMES:
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in KERNEL_NAMES}
    if isinstance(node, ast.Name):
        return tuples.get(node.id, set())
    return set()


def _names_a_kernel(node: ast.AST) -> bool:
    """The other operand is about a kernel: its source mentions ``kernel`` or it is a ``.name``."""
    text = ast.unparse(node).lower()
    return "kernel" in text or text == "name" or text.endswith(".name")


def kernel_name_comparisons(source: str, where: str = "<src>") -> list[str]:
    tree = ast.parse(source)
    tuples = {t.id: _names_in(node.value, {}) for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name) and _names_in(node.value, {})}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, op in enumerate(operands):
                if _names_in(op, tuples) and any(_names_a_kernel(o) for j, o in enumerate(operands) if j != i):
                    found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
                    break
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and any(k.startswith(node.args[0].value) for k in KERNEL_NAMES) and len(node.args[0].value) > 3):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_kernel_name_is_compared_outside_the_kernel_modules():
    found = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel not in KERNEL_MODULES:
                found += kernel_name_comparisons(path.read_text(encoding="utf-8"), str(rel))
    assert not found, "read KernelConfig traits (pipeline/core/kernel_config.py) instead of names:\n" + \
        "\n".join(found)


@pytest.mark.parametrize("snippet", [
    'if kernel.cfg.name == "mask": pass',
    'x = "mdlm" if kernel_name == "mask" else "ctmc"',
    'SEM = ("semdlm", "semdlm_plus")\nok = kernel_name in SEM',
    'ok = cfg.name != "semdlm_softmax"',
    'ok = "mask" in cfg.kernels',
    'ok = [k for k in kernels if k.startswith("semdlm")]',
])
def test_the_scan_sees_name_switches(snippet):
    assert kernel_name_comparisons(snippet)


@pytest.mark.parametrize("snippet", [
    'ok = "mask" in special_ids',  # a special token's name, not a kernel's
    'ok = method == "mdlm"',
    'x = build("mask", tables, V)',  # choosing a kernel is not switching on one
])
def test_the_scan_leaves_other_strings_alone(snippet):
    assert not kernel_name_comparisons(snippet)


def test_every_kernel_and_preset_has_traits():
    assert set(TRAITS) == set(KERNEL_NAMES)
    for name, cfg in PRESETS.items():
        assert cfg.traits is traits_of(cfg.name), name
    with pytest.raises(ValueError, match="kernel name must be one of"):
        traits_of("gauss")


def test_traits_keep_the_behaviour_the_names_had():
    """The switches the traits replaced, pinned: which kernel absorbs, samples with mdlm, has the penalty on,
    needs the table, weighs its global branch how, and which bounds apply."""
    expect = {  # absorbing, default sampler, penalty, neighbours, bounds
        "mask": (True, "mdlm", False, False, ("mdlm_continuous",)),
        "uniform": (False, "ctmc", False, False, ("ctelbo_continuous", "udlm_continuous")),
        "semdlm": (False, "ctmc", True, True, ("ctelbo_continuous",)),
        "semdlm_softmax": (False, "ctmc", True, True, ("ctelbo_continuous",)),
        "semdlm_plus": (False, "ctmc", True, True, ("ctelbo_continuous", "resampled_continuous")),
    }
    for name, (absorbing, sampler, penalty, neighbours, bounds) in expect.items():
        tr = traits_of(name)
        assert (tr.absorbing, tr.default_sampler, tr.penalty_by_default, tr.needs_neighbors,
                tr.continuous_bounds) == (absorbing, sampler, penalty, neighbours, bounds), name
    assert [n for n in KERNEL_NAMES if traits_of(n).rank_weights_per_token] == ["semdlm_softmax"]
    assert [n for n in KERNEL_NAMES if traits_of(n).absorbs_missing_ranks] == ["semdlm_plus"]
    import torch

    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    for name in ("mask", "uniform"):
        cfg = KernelConfig.preset(name)
        assert torch.allclose(beta_of(cfg, t), t)  # loglinear alpha = 1 - t: beta = t
    assert torch.allclose(beta_of(KernelConfig.preset("semdlm_plus"), t), t ** 2)  # Sec 4.2: beta_t = t^2
    assert not beta_of(KernelConfig.preset("semdlm"), t).any()
    assert KernelConfig.preset("semdlm", k_max=64).fitted_to_table(8).k_max == 8
    assert KernelConfig.preset("semdlm_plus", k_max=64).fitted_to_table(8).k_max == 64

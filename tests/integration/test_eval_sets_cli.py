"""``python -m pipeline.evaluate --eval-set ...`` on tiny exports trained on a real preprocess artifact:
a raw .txt set packs exactly like the preprocessed split of the same text, results match
evaluate_nelbo on the same sequences, AR works, a changed file makes the evaluation stale, and an
offline hf: set is one error line with exit status 2."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline import evaluate as evaluate_cli

L = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer, lm1b_lines):
    from pipeline.common.export_artifact import save_export
    from pipeline.common.hf_assets import tokenizer_info
    from pipeline.core.kernels import KernelConfig
    from pipeline.core.model import AutoregressiveLM, DiffusionTransformer, ModelConfig
    from preprocess.build import run_preprocess
    from preprocess.config import PreprocessConfig

    root = tmp_path_factory.mktemp("evalsets")
    (root / "train.txt").write_text("\n".join(lm1b_lines[:40]) + "\n")
    (root / "test.txt").write_text("\n".join(lm1b_lines[40:46]) + "\n\n")
    cfg = PreprocessConfig(mode="lm1b", seq_len=L, progress=False,
                           inputs={"train": [str(root / "train.txt")], "test": [str(root / "test.txt")]})
    pre = run_preprocess(cfg, root / "pre", log=lambda *_: None)
    info, V = tokenizer_info(tokenizer), len(tokenizer)
    torch.manual_seed(0)
    paths = {"root": root, "pre": pre}
    for name, kind in (("mask", "diffusion"), ("ar", "ar")):
        mcfg = ModelConfig.preset("tiny", vocab_size=V, causal=kind == "ar")
        model = AutoregressiveLM(mcfg) if kind == "ar" else DiffusionTransformer(mcfg)
        kcfg = KernelConfig.preset(name) if kind == "diffusion" else None
        paths[name] = save_export(root / name, model, mcfg, kcfg, info, {"preprocessed": str(pre)}, kind)
    paths["frequency"] = _frequency_model(root, pre, info, V)
    return paths


def _frequency_model(root, pre, info, V):
    """A kernel-aware uniform export whose network *is* the frequency denoiser: output weight 0 (its init),
    output bias = the smoothed log unigram of its training data."""
    import numpy as np

    from pipeline.common.export_artifact import save_export
    from pipeline.core.kernels import KernelConfig
    from pipeline.core.model import DiffusionTransformer, ModelConfig
    from pipeline.core.posterior import PosteriorConfig, Reading, posterior_record
    from pipeline.evaluation.baselines import unigram_log_probs

    mcfg = ModelConfig.preset("tiny", vocab_size=V)
    model = DiffusionTransformer(mcfg)
    counts = np.load(pre / "unigram_counts.npy", allow_pickle=False)
    with torch.no_grad():
        model.head.bias.copy_(torch.from_numpy(unigram_log_probs(counts)).float())
    record = posterior_record(PosteriorConfig("kernel", "all", False), Reading(True, 0.0, None), None)
    return save_export(root / "frequency", model, mcfg, KernelConfig.preset("uniform"), info,
                       {"preprocessed": str(pre)}, "diffusion", posterior=record)


def _run(model, out, *extra):
    return evaluate_cli.main(["--model", str(model), "--out", str(out), "--judge", "none", "--no-samples",
                              "--t-draws", "2", "--eval-batch-size", "4", "--quiet", *extra])


@pytest.mark.parametrize("kind", ["mask", "ar"])
def test_eval_sets_split_and_raw_file_agree(setup, tmp_path, tokenizer, kind, capsys):
    from pipeline.common.export_artifact import load_export
    from pipeline.evaluation.nelbo import evaluate_nelbo, read_test_sequences

    root, pre, out = setup["root"], setup["pre"], tmp_path / "e"
    assert _run(setup[kind], out, "--eval-set", f"a={pre / 'test'}", "--eval-set",
                f"b={root / 'test.txt'}") == 0
    results = json.loads((out / "results.json").read_text())
    sets = results["eval_sets"]
    assert set(sets) == {"a", "b"} and results["nelbo"]["tokens"] == sets["a"]["tokens"]
    seqs = read_test_sequences(pre / "test")
    pad = tokenizer.pad_token_id
    lines = [t for t in (root / "test.txt").read_text().splitlines() if t.strip()]
    body = [min(len(tokenizer(t, add_special_tokens=False)["input_ids"]), L - 2) + 2 for t in lines]
    real = sum(body) - (len(lines) if kind == "ar" else 0)  # AR does not score the first token ([CLS])
    assert int((seqs != pad).sum()) == sum(body) and sets["a"]["tokens"] == sets["b"]["tokens"] == real
    expected = evaluate_nelbo(load_export(setup[kind]), seqs, pad, 4, 2, progress=False)
    for name in ("a", "b"):  # the raw file packs exactly like preprocess: the very same numbers
        entry = sets[name]
        assert entry["nats_per_token"] == pytest.approx(expected["nats_per_token"], rel=1e-12)
        assert entry["sequences"] == len(lines) and entry["detokenizer"] == "none"
        assert set(entry) >= {"nats_per_token", "perplexity", "bound", "tokens", "stderr", "source"}
    assert sets["a"]["bound"] == ("ar_exact_nll" if kind == "ar" else "mdlm_continuous")
    assert "Zero-shot likelihood" in (out / "report.md").read_text()
    # a changed raw file makes the evaluation stale; an unchanged one does not
    capsys.readouterr()
    assert _run(setup[kind], out, "--eval-set", f"a={pre / 'test'}", "--eval-set", f"b={root / 'test.txt'}") == 0
    assert "up to date" in capsys.readouterr().out
    changed = tmp_path / "changed.txt"
    changed.write_text("\n".join(lines[:3]) + "\n")
    assert _run(setup[kind], out, "--eval-set", f"b={changed}", "--max-test-sequences", "2") == 0
    assert json.loads((out / "results.json").read_text())["eval_sets"]["b"]["sequences"] == 2
    changed.write_text("\n".join(lines[:4]) + "\n")
    capsys.readouterr()
    assert _run(setup[kind], out, "--eval-set", f"b={changed}", "--max-test-sequences", "2") == 0
    assert "up to date" not in capsys.readouterr().out


def test_offline_hf_eval_set_is_one_line_exit_2(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SystemExit) as exc:
        _run(setup["mask"], tmp_path / "e", "--eval-set", "wikitext2=hf:wikitext:wikitext-2-raw-v1@test")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m pipeline.evaluate: error: --eval-set wikitext2")
    assert not (tmp_path / "e").exists()


def test_bad_eval_set_sources_exit_2(setup, tmp_path, capsys):
    for arg, match in ((f"x={tmp_path / 'missing.txt'}", "no such file"), (f"x={tmp_path}", "not an MDS split"),
                       ("x=a.txt#detok=moses", "unknown detokenizer")):
        with pytest.raises(SystemExit) as exc:
            _run(setup["mask"], tmp_path / "e", "--eval-set", arg)
        assert exc.value.code == 2 and match in capsys.readouterr().err


def test_baseline_is_scored_on_the_same_sequences_with_a_paired_difference(setup, tmp_path, capsys):
    from pipeline.common.export_artifact import load_export
    from pipeline.evaluation.nelbo import evaluate_nelbo, read_test_sequences

    out = tmp_path / "eval"
    assert _run(setup["mask"], out, "--baseline", str(setup["ar"])) == 0
    results = json.loads((out / "results.json").read_text())
    base, ours = results["baseline"], results["nelbo"]
    seqs = read_test_sequences(setup["pre"] / "test")
    alone = evaluate_nelbo(load_export(setup["ar"]), seqs, 0, 4, 2, progress=False)  # [PAD] is 0
    assert base["nats_per_token"] == pytest.approx(alone["nats_per_token"], rel=1e-12)
    assert base["bound"] == "ar_exact_nll" and base["tokens"] == ours["tokens"] - len(seqs)  # no first token
    assert base["difference"] == pytest.approx(ours["nats_per_token"] - base["nats_per_token"], rel=1e-12)
    assert base["difference_stderr"] > 0 and "per_sequence" not in ours
    assert "Against the baseline" in (out / "report.md").read_text()
    capsys.readouterr()  # the baseline is an input: unchanged, the evaluation is up to date
    assert _run(setup["mask"], out, "--baseline", str(setup["ar"])) == 0
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        _run(setup["mask"], tmp_path / "bad", "--baseline", str(setup["ar"]), "--no-nelbo")
    assert stop.value.code == 2 and "--baseline compares test likelihoods" in capsys.readouterr().err


def test_frequency_floor_is_scored_on_the_same_draws(setup, tmp_path):
    """A model that is the frequency denoiser sits exactly on its floor (same t and x_t draws); mask has no
    floor (its bound is exact at zero context), and --no-frequency-floor leaves it out."""
    out = tmp_path / "eval"
    assert _run(setup["frequency"], out) == 0
    nelbo = json.loads((out / "results.json").read_text())["nelbo"]
    floor = nelbo["unigram"]["frequency_floor"]
    assert floor["bound"] == nelbo["bound"] and floor["candidates"] == pytest.approx(nelbo["candidates"], abs=1e-9)
    assert floor["margin_nats"] == pytest.approx(0.0, abs=1e-9) and floor["margin_stderr"] < 1e-9
    assert floor["slack"] == pytest.approx(floor["nats_per_token"] - nelbo["unigram"]["nats_per_token"], abs=1e-12)
    assert "A denoiser that knows only these frequencies" in (out / "report.md").read_text()
    assert _run(setup["frequency"], tmp_path / "off", "--no-frequency-floor") == 0
    assert "frequency_floor" not in json.loads((tmp_path / "off" / "results.json").read_text())["nelbo"]["unigram"]
    assert _run(setup["mask"], tmp_path / "mask") == 0
    assert "frequency_floor" not in json.loads((tmp_path / "mask" / "results.json").read_text())["nelbo"]["unigram"]

"""The sample and evaluate CLIs through real export directories (tiny random models, bert vocabulary)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import evaluate as evaluate_cli
from pipeline import sample as sample_cli
from pipeline.sampling.stage import DEFAULT_PENALTY

L = 16


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tokenizer):
    """A neighbour artifact, an MDS test split and three exports: semdlm_plus, mask, AR (judge)."""
    from streaming import MDSWriter

    from pipeline.common.export_artifact import save_export
    from pipeline.common.hf_assets import tokenizer_info
    from pipeline.core.kernels import KernelConfig
    from pipeline.core.model import AutoregressiveLM, DiffusionTransformer, ModelConfig

    from neighbor_tables import write_neighbor_artifact

    root = tmp_path_factory.mktemp("exports")
    info, V = tokenizer_info(tokenizer), len(tokenizer)
    special = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
               tokenizer.mask_token_id]
    valid = np.ones(V, bool)
    valid[special] = False
    valid_ids = np.flatnonzero(valid)
    rng = np.random.default_rng(0)
    neighbors = np.stack([rng.choice(valid_ids, 4, replace=False) for _ in range(V)]).astype(np.int32)
    neighbors[neighbors == np.arange(V)[:, None]] = valid_ids[0] if valid_ids[0] else valid_ids[1]
    write_neighbor_artifact(root / "neighbors", dict(neighbors=neighbors, valid_vocab=valid,
                                                     similarities=np.tile(np.float32([0.9, 0.8, 0.7, 0.6]), (V, 1)),
                                                     unigram_prior=valid / valid.sum()))
    with MDSWriter(out=str(root / "test"), columns={"tokens": f"ndarray:int32:{L}"}) as w:
        for i in range(4):
            x = np.zeros(L, np.int32)
            x[0], x[1:9 + i], x[9 + i] = tokenizer.cls_token_id, rng.integers(2000, 3000, 8 + i), tokenizer.sep_token_id
            w.write({"tokens": x})
    torch.manual_seed(0)
    paths = {}
    for name, kind in (("semdlm_plus", "diffusion"), ("mask", "diffusion"), ("ar", "ar")):
        cfg = ModelConfig.preset("tiny", vocab_size=V, causal=kind == "ar")
        model = AutoregressiveLM(cfg) if kind == "ar" else DiffusionTransformer(cfg)
        with torch.no_grad():
            torch.nn.init.normal_((model.backbone.head if kind == "ar" else model.head).weight, std=0.3)
        kcfg = KernelConfig.preset(name, k_max=4) if kind == "diffusion" else None
        nb = str(root / "neighbors") if name == "semdlm_plus" else None
        paths[name] = save_export(root / name, model, cfg, kcfg, info, {"neighbors": nb}, kind)
    paths["test"] = root / "test"
    return paths


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sample_cli_writes_valid_samples(exports, tmp_path, tokenizer):
    out = tmp_path / "s"
    args = ["--model", str(exports["semdlm_plus"]), "--out", str(out), "--steps", "4", "--num-samples", "3",
            "--batch-size", "2", "--seq-len", str(L), "--lambda-freq", "1", "--lambda-sem", "0.5",
            "--window", "4", "--top-p", "0.9", "--quiet"]
    assert sample_cli.main(args) == 0
    records = read_jsonl(out / "samples.jsonl")
    assert [r["index"] for r in records] == [0, 1, 2]
    for r in records:
        assert len(r["ids"]) == L and all(0 <= i < len(tokenizer) for i in r["ids"])
        assert tokenizer.mask_token_id not in r["ids"]
        assert r["text"] == tokenizer.decode(r["ids"], skip_special_tokens=True)
        assert r["config"]["method"] == "ctmc" and r["config"]["penalty"]["lambda_sem"] == 0.5  # ctmc: the default
        assert set(r["seed"]) == {"run", "batch", "row"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "sample" and manifest["complete"]
    assert sample_cli.main(args) == 0  # second run: up to date, files untouched
    # no --lambda-* flags: a semantic kernel samples with the documented penalty, the recent (left) window
    plain = ["--model", str(exports["semdlm_plus"]), "--out", str(tmp_path / "d"), "--steps", "2", "--num-samples", "1",
             "--seq-len", str(L), "--quiet"]
    assert sample_cli.main(plain) == 0
    penalty = read_jsonl(tmp_path / "d" / "samples.jsonl")[0]["config"]["penalty"]
    assert (penalty["lambda_freq"], penalty["lambda_sem"]) == DEFAULT_PENALTY and penalty["window_side"] == "left"
    assert read_jsonl(out / "samples.jsonl") == records


def test_sample_cli_splits_ranks_and_gathers(exports, tmp_path, monkeypatch):
    base = ["--model", str(exports["mask"]), "--steps", "4", "--num-samples", "5", "--batch-size", "2",
            "--seq-len", str(L), "--quiet"]
    assert sample_cli.main(base + ["--out", str(tmp_path / "one")]) == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):  # rank 1 leaves its part, rank 0 draws its own batches and gathers
        monkeypatch.setenv("RANK", rank)
        assert sample_cli.main(base + ["--out", str(tmp_path / "two")]) == 0
    one, two = read_jsonl(tmp_path / "one" / "samples.jsonl"), read_jsonl(tmp_path / "two" / "samples.jsonl")
    assert [r["ids"] for r in one] == [r["ids"] for r in two] and len(two) == 5
    assert not list(tmp_path.glob(".two.parts*"))


def test_sample_cli_bad_input_exits_2(exports, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sample_cli.main(["--model", str(exports["semdlm_plus"]), "--out", str(tmp_path / "x"), "--steps", "3"])
    assert exc.value.code == 2 and "multiple of strides" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        sample_cli.main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "y")])
    assert exc.value.code == 2


def test_evaluate_cli_sweep_report_and_plots(exports, tmp_path):
    out = tmp_path / "eval"
    args = ["--model", str(exports["semdlm_plus"]), "--out", str(out), "--judge", str(exports["ar"]),
            "--test-split", str(exports["test"]), "--t-draws", "2", "--bound", "tstep", "--nelbo-steps", "8",
            "--steps", "2,4", "--lambda-freq", "0,1", "--num-samples", "2", "--batch-size", "2",
            "--seq-len", str(L), "--quiet"]
    assert evaluate_cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["nelbo"]["bound"] == "discrete_T8" and results["nelbo"]["perplexity"] > 1
    assert len(results["sweep"]) == 4
    for row in results["sweep"]:
        assert row["gen_ppl"] > 1 and 0 <= row["semantic_basin_rate"] <= 1 and row["entropy_mean"] > 0
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].startswith("steps,lambda_freq") and len(csv_lines) == 5
    for png in ("sweep_steps.png", "entropy_hist.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "Test likelihood" in report and "Gen-PPL" in report and "sweep_steps.png" in report


def test_evaluate_cli_on_given_samples_and_ar_model(exports, tmp_path):
    samples = tmp_path / "s"
    sample_cli.main(["--model", str(exports["mask"]), "--out", str(samples), "--steps", "4", "--num-samples", "2",
                     "--batch-size", "2", "--seq-len", str(L), "--schedule", "dtc", "--quiet"])
    out = tmp_path / "e"
    assert evaluate_cli.main(["--model", str(exports["mask"]), "--out", str(out), "--judge", "none",
                              "--no-nelbo", "--samples", str(samples), "--quiet"]) == 0
    row = json.loads((out / "results.json").read_text())["sweep"][0]
    assert row["steps"] == 4 and "gen_ppl" not in row and row["num_samples"] == 2
    out_ar = tmp_path / "ar"
    assert evaluate_cli.main(["--model", str(exports["ar"]), "--out", str(out_ar), "--judge", "none",
                              "--test-split", str(exports["test"]), "--quiet"]) == 0
    nelbo = json.loads((out_ar / "results.json").read_text())["nelbo"]
    assert nelbo["bound"] == "ar_exact_nll" and nelbo["tokens"] == sum(9 + i for i in range(4))


def test_runtime_only_options_do_not_rerun_the_stages(exports, tmp_path, capsys):
    """--judge-batch-size / --device / --quiet are runtime-only; the batch sizes decide the numbers."""
    samples = tmp_path / "s"
    base = ["--model", str(exports["mask"]), "--out", str(samples), "--steps", "4", "--num-samples", "3",
            "--seq-len", str(L), "--quiet"]
    assert sample_cli.main(base + ["--batch-size", "2", "--device", "cpu"]) == 0
    first = read_jsonl(samples / "samples.jsonl")
    capsys.readouterr()
    assert sample_cli.main(base + ["--batch-size", "2"]) == 0 and "up to date" in capsys.readouterr().out
    assert sample_cli.main(base + ["--batch-size", "3"]) == 0 and "up to date" not in capsys.readouterr().out
    # batch k is seeded from (seed, k): another batch size draws other samples
    assert [r["ids"] for r in read_jsonl(samples / "samples.jsonl")] != [r["ids"] for r in first]
    out = tmp_path / "e"
    args = ["--model", str(exports["mask"]), "--out", str(out), "--judge", str(exports["ar"]),
            "--test-split", str(exports["test"]), "--t-draws", "1", "--samples", str(samples)]
    assert evaluate_cli.main(args + ["--judge-batch-size", "1", "--eval-batch-size", "2"]) == 0
    capsys.readouterr()
    assert evaluate_cli.main(args + ["--judge-batch-size", "4", "--eval-batch-size", "2", "--quiet",
                                     "--device", "cpu"]) == 0
    assert "up to date" in capsys.readouterr().out
    nelbo = json.loads((out / "results.json").read_text())["nelbo"]["nelbo_nats"]
    assert evaluate_cli.main(args + ["--eval-batch-size", "4", "--quiet"]) == 0
    assert "up to date" not in capsys.readouterr().out  # the NELBO draws t and x_t batch by batch
    assert json.loads((out / "results.json").read_text())["nelbo"]["nelbo_nats"] != nelbo


def test_sample_cli_prompts_infill_and_stop_at_eos(exports, tmp_path, tokenizer, capsys):
    """--prompt FILE cycles its prompts and keeps them; --stop-at-eos trims; --infill keeps the template."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat\n\nhello world\n")
    out = tmp_path / "p"
    args = ["--model", str(exports["mask"]), "--out", str(out), "--steps", "4", "--num-samples", "3",
            "--batch-size", "2", "--seq-len", str(L), "--prompt", str(prompts), "--stop-at-eos", "--quiet"]
    assert sample_cli.main(args) == 0
    records = read_jsonl(out / "samples.jsonl")
    for r in records:
        text = ["the cat sat", "hello world"][r["index"] % 2]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # no preprocessed data: no [CLS]
        assert r["prompt"] == text and r["ids"][:len(ids)] == ids and r["text"].startswith(text)
        assert r["length"] == len(r["ids"]) <= L and isinstance(r["stopped_at_eos"], bool)
        assert (r["ids"][-1] == tokenizer.sep_token_id) == r["stopped_at_eos"]
        assert r["config"]["method"] == "mdlm"
    capsys.readouterr()
    assert sample_cli.main(args) == 0 and "up to date" in capsys.readouterr().out
    prompts.write_text("the dog\n")  # the prompt file is a stage input
    assert sample_cli.main(args) == 0 and "up to date" not in capsys.readouterr().out
    assert {r["prompt"] for r in read_jsonl(out / "samples.jsonl")} == {"the dog"}

    template = "the [MASK]*3 sat on the mat"
    out_i = tmp_path / "i"
    assert sample_cli.main(["--model", str(exports["semdlm_plus"]), "--out", str(out_i), "--steps", "4",
                            "--num-samples", "2", "--batch-size", "2", "--infill", template, "--quiet"]) == 0
    for r in read_jsonl(out_i / "samples.jsonl"):
        head, tail = (tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("the", "sat on the mat"))
        assert r["infill"] == template and r["config"]["strides"] == 1 and len(r["ids"]) == 4 + len(tail)
        assert r["ids"][:1] == head and r["ids"][4:] == tail
    with pytest.raises(SystemExit) as exc:
        sample_cli.main(["--model", str(exports["mask"]), "--out", str(tmp_path / "x"), "--infill", template,
                         "--strides", "2"])
    assert exc.value.code == 2 and "--strides must be 1" in capsys.readouterr().err
    out_e = tmp_path / "e"  # evaluate draws conditioned samples the same way
    assert evaluate_cli.main(["--model", str(exports["mask"]), "--out", str(out_e), "--judge", "none", "--no-nelbo",
                              "--steps", "4", "--num-samples", "2", "--batch-size", "2", "--seq-len", str(L),
                              "--prompt", "hello world", "--quiet"]) == 0
    drawn = read_jsonl(out_e / "samples" / "steps4_lf0_ls0.jsonl")
    assert all(r["prompt"] == "hello world" and r["text"].startswith("hello world") for r in drawn)

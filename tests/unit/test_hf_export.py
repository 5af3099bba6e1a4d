"""HF-format exports: ``python -m pipeline.export`` writes a directory that transformers loads (remote code)
and the pipeline's loader still reads; logits identical through both, tokenizer and model card included.

Real transformers loads, no mocks: a tiny model with random weights in a run directory laid out as the
trainer writes it (checkpoint marker + model states), exported through the CLI in-process.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline import export as export_cli
from pipeline.common.artifacts import StageRun, load_manifest
from pipeline.common.export_artifact import load_export
from pipeline.core.kernels import KernelConfig
from pipeline.core.model import ModelConfig, build_model
from pipeline.training.checkpoint import MARKER, checkpoint_dir

from cli_utils import run_main

STEP = 5


def fake_preprocessed(directory: Path, tokenizer_info: dict) -> Path:
    """A preprocess artifact's manifest (what the model card reads of it: config, seq_len, stats)."""
    config = {"mode": "lm1b", "seq_len": 128, "inputs": {"train": ["corpus/train.txt"]}}
    run = StageRun("preprocess", directory, config=config, tokenizer=tokenizer_info)
    with run as tmp:
        run.extra.update(seq_len=128, stats={"train": {"sequences": 10, "tokens": 1280}})
        (tmp / "stats.json").write_text("{}")
    return directory


def fake_run(root: Path, kind: str, tokenizer_info: dict, seed: int = 0,
             preprocessed: Path | None = None) -> tuple[Path, torch.nn.Module]:
    """A run directory with one complete checkpoint (EMA = raw weights), as read_checkpoint_for_export reads it."""
    cfg = ModelConfig.preset("tiny", vocab_size=tokenizer_info["vocab_size"], causal=kind == "ar")
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():  # away from the zero init: adaLN, head and biases all matter
            p.normal_(std=0.1)
    tag_dir = checkpoint_dir(root) / f"global_step{STEP}"
    tag_dir.mkdir(parents=True)
    weights = model.state_dict()
    torch.save({"module": weights, "ema": {"weights": weights}}, tag_dir / "mp_rank_00_model_states.pt")
    kernel = KernelConfig.preset("mask").to_dict() if kind == "diffusion" else None
    artifacts = {"preprocessed": str(preprocessed) if preprocessed else None, "neighbors": None}
    marker = {"identity": {"model": cfg.to_dict(), "kernel": kernel}, "tokenizer": tokenizer_info,
              "artifacts": artifacts, "step": STEP, "tokens_seen": STEP * 64, "tag": tag_dir.name}
    (tag_dir / MARKER).write_text(json.dumps(marker))
    return root, model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    """Both kinds exported through the CLI: {kind: (export dir, the model as trained)}."""
    from pipeline.common.hf_assets import tokenizer_info

    root = tmp_path_factory.mktemp("hf")
    info = tokenizer_info(tokenizer)
    data = fake_preprocessed(root / "data", info)
    out = {}
    for kind in ("diffusion", "ar"):
        run, model = fake_run(root / f"run_{kind}", kind, info, preprocessed=data)
        assert run_main(export_cli.main, run, "--out", root / f"export_{kind}", progress=True) == 0
        out[kind] = (root / f"export_{kind}", model)
    return out


def batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, vocab_size, (2, 12), generator=g)
    attention = torch.ones(2, 12, dtype=torch.long)
    attention[1, 9:] = 0  # a padded row: the mask goes through both loaders alike
    return x, torch.rand(2, generator=g), attention


def test_diffusion_export_gives_identical_logits_through_both_loaders(exported):
    from transformers import AutoModelForMaskedLM

    directory, trained = exported["diffusion"]
    ours = load_export(directory)
    hf = AutoModelForMaskedLM.from_pretrained(directory, trust_remote_code=True)
    assert type(hf).__name__ == "SemDLMForMaskedLM" and not hf.training
    x, t, attention = batch(ours.model_cfg.vocab_size)
    with torch.no_grad():
        want = ours.model(x, t, attention.bool())
        assert torch.equal(hf(x, timesteps=t, attention_mask=attention).logits, want)
        assert torch.equal(trained(x, t, attention.bool()), want)
        assert torch.equal(hf(x[:1], timesteps=0.25).logits, ours.model(x[:1], torch.tensor([0.25])))
    assert ours.kernel.cfg.name == "mask" and hf.config.kernel == ours.config["kernel"]


def test_the_transformers_loader_applies_the_recorded_clean_support(tokenizer, tmp_path):
    """An export whose posterior record excludes tokens (special and unused ones, the default support) gives
    -inf there through transformers too: both loaders read the same p_theta support."""
    from transformers import AutoModelForMaskedLM

    from pipeline.common.hf_assets import tokenizer_info
    from pipeline.core.posterior import PosteriorConfig, make_reading, posterior_record

    info = tokenizer_info(tokenizer)
    run, _ = fake_run(tmp_path / "run", "diffusion", info, preprocessed=fake_preprocessed(tmp_path / "data", info))
    support = torch.ones(info["vocab_size"], dtype=torch.bool)
    support[list(info["special_ids"].values())] = False
    support[1:100] = False  # [unusedN]
    marker_path = checkpoint_dir(run) / f"global_step{STEP}" / MARKER
    marker = json.loads(marker_path.read_text())
    marker["posterior"] = posterior_record(PosteriorConfig(), make_reading(PosteriorConfig(), "mask"), support)
    marker_path.write_text(json.dumps(marker))
    assert run_main(export_cli.main, run, "--out", tmp_path / "export", progress=True) == 0
    ours = load_export(tmp_path / "export")
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "export", trust_remote_code=True)
    x, t, attention = batch(ours.model_cfg.vocab_size)
    with torch.no_grad():
        got = hf(x, timesteps=t, attention_mask=attention).logits
        assert torch.equal(got, ours.model(x, t, attention.bool()))
    assert torch.isinf(got[..., ~support]).all() and torch.isfinite(got[..., support]).all()


def test_ar_export_gives_identical_logits_and_generates(exported):
    from transformers import AutoModelForCausalLM

    directory, trained = exported["ar"]
    ours = load_export(directory)
    hf = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
    assert type(hf).__name__ == "SemDLMForCausalLM" and ours.kernel is None
    x, _, attention = batch(ours.model_cfg.vocab_size)
    with torch.no_grad():
        want = ours.model(x, attention.bool())
        assert torch.equal(hf(x, attention_mask=attention).logits, want)
        assert torch.equal(trained(x, attention.bool()), want)
        greedy = x[:, :3]
        for _ in range(4):
            greedy = torch.cat([greedy, ours.model(greedy)[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(hf.generate(x[:, :3], max_new_tokens=4, do_sample=False), greedy)
        loss = hf(x[:1], labels=x[:1]).loss
    assert torch.isclose(loss, torch.nn.functional.cross_entropy(want[0, :-1], x[0, 1:]))


def test_export_directory_is_artifact_and_hf_model(exported):
    directory, _ = exported["diffusion"]
    manifest = load_manifest(directory, stage="export")
    for name in ("config.json", "model.safetensors", "README.md", "configuration_semdlm.py", "modeling_semdlm.py",
                 "semdlm_model.py", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        assert name in manifest["outputs"], name
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "semdlm" and config["architectures"] == ["SemDLMForMaskedLM"]
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_semdlm.SemDLMForMaskedLM"
    assert config["kernel"]["alpha_schedule"] and config["training"]["step"] == STEP
    source = Path(__file__).resolve().parents[2] / "pipeline" / "core" / "model.py"
    assert (directory / "semdlm_model.py").read_text() == source.read_text()  # the same network code
    for name in ("configuration_semdlm.py", "modeling_semdlm.py", "semdlm_model.py"):  # self-contained
        tree = ast.parse((directory / name).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert imported <= {"__future__", "base64", "math", "dataclasses", "argparse", "torch", "transformers"}, name
    card = (directory / "README.md").read_text()
    assert "kernel `mask`" in card and f"{STEP} steps" in card and "Not evaluated." in card
    assert "| alpha_t | 1.0000 | 0.7500 | 0.5000 | 0.2500 | 0.0000 |" in card  # mask: loglinear schedule
    assert "mode `lm1b`, sequence length 128" in card and "train: 10 sequences, 1,280 tokens" in card
    assert "AutoModelForMaskedLM" in card and config["artifacts"]["preprocessed_manifest_sha256"] in card


def test_shipped_tokenizer_encodes_like_ours_without_truncation_or_padding(exported, tokenizer):
    from transformers import AutoTokenizer

    from pipeline.common.hf_assets import load_tokenizer_spec

    directory, _ = exported["diffusion"]
    shipped = AutoTokenizer.from_pretrained(directory)
    spec = load_tokenizer_spec()
    spec.backend.no_truncation()
    spec.backend.no_padding()
    long = " ".join(["the quick brown fox jumps over the lazy dog ."] * 20)  # > 128 tokens: no truncation
    texts = [long, "a short sentence ."]
    assert [shipped(t)["input_ids"] for t in texts] == [e.ids for e in spec.backend.encode_batch(texts)]
    assert len(shipped(long)["input_ids"]) > 128 and shipped.backend_tokenizer.padding is None
    assert shipped.get_vocab() == tokenizer.get_vocab()


def write_evaluation(directory: Path, export_dir: Path) -> Path:
    """An evaluation artifact of ``export_dir`` in the evaluate stage's layout (results.json, pinned export)."""
    results = {"model": str(export_dir), "kind": "diffusion", "nelbo": {
        "bound": "mdlm_continuous", "sequences": 4, "tokens": 40, "nats_per_token": 3.25, "stderr": 0.05,
        "bits_per_token": 4.689, "perplexity": 25.79}}
    with StageRun("evaluate", directory, config={"test": 1}, upstream={"model": export_dir}) as tmp:
        (tmp / "results.json").write_text(json.dumps(results))
    return directory


def test_eval_puts_test_bounds_on_the_card_and_refuses_other_weights(exported, tmp_path, capsys):
    directory, _ = exported["diffusion"]
    evaluation = write_evaluation(tmp_path / "eval", directory)
    run = Path(load_export(directory).config["training"]["run_dir"])
    assert run_main(export_cli.main, run, "--out", tmp_path / "carded", "--eval", evaluation, progress=True) == 0
    card = (tmp_path / "carded" / "README.md").read_text()
    assert "| test split | mdlm_continuous | 4 | 40 | 3.2500 | 0.0500 |" in card and "Not evaluated." not in card
    assert load_manifest(tmp_path / "carded")["upstream"]["evaluation"]["path"] == str(evaluation.resolve())
    other = write_evaluation(tmp_path / "eval_ar", exported["ar"][0])  # another model's evaluation
    capsys.readouterr()
    assert run_main(export_cli.main, run, "--out", tmp_path / "wrong", "--eval", other, progress=True) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "not an evaluation of these weights" in err[0] and not (tmp_path / "wrong").exists()


def test_push_to_hub_offline_is_one_clear_error(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = Path(load_export(exported["ar"][0]).config["training"]["run_dir"])
    status = run_main(export_cli.main, run, "--out", tmp_path / "pushed", "--push-to-hub", "someone/semdlm-tiny",
                      progress=True)
    err = capsys.readouterr().err.splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith("python -m pipeline.export: error: --push-to-hub someone/semdlm-tiny needs network")
    assert not (tmp_path / "pushed").exists()  # refused before any work


def test_tokenizer_of_another_vocabulary_is_refused(tmp_path, tokenizer, capsys):
    from pipeline.common.hf_assets import tokenizer_info

    info = {**tokenizer_info(tokenizer), "identity": "vocab-sha256:another"}
    run, _ = fake_run(tmp_path / "run", "ar", info)
    assert run_main(export_cli.main, run, "--out", tmp_path / "export", progress=True) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--tokenizer" in err[0] and not (tmp_path / "export").exists()


def test_export_written_before_the_hf_format_still_loads(exported, tmp_path):
    """An export of the earlier layout (config.json without HF keys, no remote code) loads as before."""
    directory, trained = exported["ar"]
    config = {k: v for k, v in json.loads((directory / "config.json").read_text()).items()
              if k in ("kind", "model", "kernel", "tokenizer", "artifacts", "training")}
    weights = {k: v.contiguous() for k, v in trained.state_dict().items()}
    with StageRun("export", tmp_path / "old", config=config, tokenizer=config["tokenizer"]) as tmp:
        (tmp / "config.json").write_text(json.dumps(config))
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt", "kind": "ar"})
    old = load_export(tmp_path / "old")
    x, _, _ = batch(old.model_cfg.vocab_size)
    with torch.no_grad():
        assert torch.equal(old.model(x), trained(x))

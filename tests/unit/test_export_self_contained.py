"""Self-contained exports: a copied export samples, evaluates and loads in transformers with the preprocessed
data and the neighbour artifact it was built from gone; an old export (no ``data`` / ``neighbor_tables``,
no copied tables) still loads from the recorded paths; evaluate reads the neighbour tables once.

A tiny random SemDLM+ model in a run directory laid out as the trainer writes it, exported through
``export_run`` (the CLI's library call), sampled and evaluated through ``run_sample`` / ``run_evaluate``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.common.artifacts import ArtifactError, ConfigError, StageRun, load_manifest, manifest_self_checksum
from pipeline.common.export_artifact import load_export
from pipeline.common.neighbor_artifact import LOADS
from pipeline.core.kernels import KernelConfig
from pipeline.core.model import ModelConfig, build_model
from pipeline.evaluation.stage import EvaluateConfig, run_evaluate
from pipeline.sampling.stage import SampleConfig, SamplerOptions, conditioned_seq_len, run_sample
from pipeline.training.checkpoint import MARKER, checkpoint_dir

from neighbor_tables import shifted_tables, write_neighbor_artifact

L = 16  # the data's sequence length: not the samplers' 128 fallback


def write_preprocessed(directory: Path, tokenizer, info: dict) -> Path:
    """A preprocess artifact: its manifest (mode, seq_len, special ids) and an MDS test split."""
    from streaming import MDSWriter

    config = {"mode": "lm1b", "seq_len": L, "wrap": False, "text_field": "text", "tokenizer": "default"}
    special = {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id, "pad": tokenizer.pad_token_id,
               "separator": tokenizer.sep_token_id}
    rng = np.random.default_rng(0)
    run = StageRun("preprocess", directory, config=config, tokenizer=info)
    with run as tmp:
        with MDSWriter(out=str(tmp / "test"), columns={"tokens": f"ndarray:int32:{L}"}) as w:
            for i in range(3):
                x = np.zeros(L, np.int32)
                x[0], x[1:8 + i], x[8 + i] = special["cls"], rng.integers(2000, 3000, 7 + i), special["sep"]
                w.write({"tokens": x})
        run.extra.update(seq_len=L, special_ids=special, splits=["test"])
    return directory


def write_run(root: Path, info: dict, sources: Path) -> Path:
    """A run directory with one complete checkpoint of a tiny semdlm_plus model trained on ``sources``."""
    cfg = ModelConfig.preset("tiny", vocab_size=info["vocab_size"])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1)
    tag_dir = checkpoint_dir(root) / "global_step5"
    tag_dir.mkdir(parents=True)
    weights = model.state_dict()
    torch.save({"module": weights, "ema": {"weights": weights}}, tag_dir / "mp_rank_00_model_states.pt")
    artifacts = {"preprocessed": str(sources / "data"), "neighbors": str(sources / "neighbors")}
    marker = {"identity": {"model": cfg.to_dict(), "kernel": KernelConfig.preset("semdlm_plus", k_max=4).to_dict()},
              "tokenizer": info, "artifacts": artifacts, "step": 5, "tokens_seen": 320, "tag": tag_dir.name}
    (tag_dir / MARKER).write_text(json.dumps(marker))
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer):
    """{"sources": dir of the preprocessed + neighbour artifacts, "export": an export of a run on them}."""
    from pipeline.common.hf_assets import tokenizer_info
    from pipeline.training.export import export_run

    root = tmp_path_factory.mktemp("self_contained")
    info = tokenizer_info(tokenizer)
    sources = root / "sources"
    write_preprocessed(sources / "data", tokenizer, info)
    valid = np.ones(len(tokenizer), bool)
    valid[[tokenizer.pad_token_id, tokenizer.mask_token_id]] = False
    write_neighbor_artifact(sources / "neighbors", shifted_tables(valid, 4), tokenizer=info)
    export, written = export_run(write_run(root / "run", info, sources), root / "export")
    assert written
    return {"sources": sources, "export": export, "root": root}


def sample(model: Path, out: Path, **options) -> list[list[int]]:
    """The ids of 2 samples (seed 0, the semantic penalty on, no --seq-len)."""
    cfg = SampleConfig(sampler=SamplerOptions(**options), steps=4, lambda_sem=0.5, num_samples=2, batch_size=2,
                       progress=False)
    run_sample(cfg, model, out, log=lambda *_: None)
    return [json.loads(line)["ids"] for line in (out / "samples.jsonl").read_text().splitlines()]


def evaluate(model: Path, out: Path, **fields) -> dict:
    cfg = EvaluateConfig(judge="none", steps=(4,), lambda_sem=(0.0, 0.5), num_samples=2, batch_size=2, t_draws=1,
                         nelbo_steps=8, bound="tstep", progress=False, **fields)
    run_evaluate(cfg, model, out, log=lambda *_: None)
    return json.loads((out / "results.json").read_text())


class SourcesGone:
    """Renames the export's source artifacts away for the block, and back after it."""

    def __init__(self, sources: Path, *names: str):
        self.pairs = [(sources / n, sources.with_name(f"{sources.name}_gone_{n}")) for n in names or ("",)]

    def __enter__(self):
        for here, away in self.pairs:
            here.rename(away)

    def __exit__(self, *exc):
        for here, away in self.pairs:
            away.rename(here)


def strip_to_old(export: Path, out: Path) -> Path:
    """A copy of ``export`` as exports were before they were self-contained: no ``data``, ``neighbor_tables``
    nor ``tokenizer.shipped`` in config.json (and its manifest), no copied tables."""
    shutil.copytree(export, out)
    shutil.rmtree(out / "neighbors")
    config = json.loads((out / "config.json").read_text())
    for key in ("data", "neighbor_tables"):
        config.pop(key)
    config["tokenizer"].pop("shipped")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"] = config
    manifest["outputs"] = {rel: meta for rel, meta in manifest["outputs"].items() if not rel.startswith("neighbors/")}
    manifest["outputs"]["config.json"]["size"] = (out / "config.json").stat().st_size
    manifest.pop("manifest_sha256")
    manifest["manifest_sha256"] = manifest_self_checksum(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    load_manifest(out, stage="export")  # a consistent artifact
    return out


def test_export_records_data_tokenizer_and_carries_the_tables(built):
    from pipeline.common.verify import artifact_problems

    export, sources = built["export"], built["sources"]
    config = json.loads((export / "config.json").read_text())
    assert config["data"]["seq_len"] == L and config["data"]["mode"] == "lm1b" and config["data"]["wrap"] is False
    assert config["data"]["special_ids"]["sep"] == config["tokenizer"]["special_ids"]["sep"]
    assert config["tokenizer"]["shipped"] is True and (export / "tokenizer.json").is_file()
    source = load_manifest(sources / "neighbors")["outputs"]
    outputs = load_manifest(export)["outputs"]
    assert len(config["neighbor_tables"]["files"]) == 7
    for name, entry in config["neighbor_tables"]["files"].items():  # byte-identical copies, sha256 recorded
        assert entry["sha256"] == source[name]["sha256"] == outputs[f"neighbors/{name}"]["sha256"]
        assert (export / "neighbors" / name).read_bytes() == (sources / "neighbors" / name).read_bytes()
    assert artifact_problems(export) == []
    assert "a copy is in `neighbors/`" in (export / "README.md").read_text()


def test_copied_export_needs_nothing_else(built, tmp_path):
    """Samples equal the original's; evaluation with an explicit test split; transformers loads it."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    test_split = shutil.copytree(built["sources"] / "data" / "test", tmp_path / "test")
    want = sample(built["export"], tmp_path / "want")
    with SourcesGone(built["sources"]):
        moved = shutil.copytree(built["export"], tmp_path / "moved")
        assert sample(moved, tmp_path / "got") == want and len(want[0]) == L  # the data's seq_len, its tables
        exported = load_export(moved)
        assert exported.tables is not None and exported.tokenizer_name == str(moved)
        with pytest.raises(ConfigError, match="test split .* is gone.*--test-split"):
            evaluate(moved, tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
        raw = tmp_path / "wiki.test.raw"
        raw.write_text("the cat sat on the mat .\nthe dog sat .\n")
        results = evaluate(moved, tmp_path / "eval", test_split=str(test_split), eval_sets=(f"raw={raw}",))
        assert results["eval_sets"]["raw"]["sequences"] >= 1  # a raw set is packed by the export's own data record
        assert results["nelbo"]["sequences"] == 3 and [r["lambda_sem"] for r in results["sweep"]] == [0.0, 0.5]
        assert all(0 <= r["semantic_basin_rate"] <= 1 for r in results["sweep"]) and results["max_sample_len"] == L
        prompted = sample(moved, tmp_path / "prompted", prompt="the cat", stop_at_eos=True)
        assert prompted[0][0] == exported.tokenizer_info["special_ids"]["cls"]  # lm1b framing, from config data
        hf = AutoModelForMaskedLM.from_pretrained(moved, trust_remote_code=True)
        ids = AutoTokenizer.from_pretrained(moved)("the cat sat", return_tensors="pt").input_ids
        with torch.no_grad():
            assert torch.equal(hf(ids, timesteps=0.5).logits, exported.model(ids, torch.tensor([0.5])))
        assert hf.config.data["seq_len"] == L


def test_old_export_loads_from_the_recorded_paths(built, tmp_path, capsys):
    old = strip_to_old(built["export"], tmp_path / "old")
    neighbors = str((built["sources"] / "neighbors").resolve())
    before = LOADS[neighbors]
    exported = load_export(old)
    assert LOADS[neighbors] == before + 1 and exported.tokenizer_name == "default"
    assert sample(old, tmp_path / "old_s") == sample(built["export"], tmp_path / "new_s")
    capsys.readouterr()
    assert conditioned_seq_len(None, exported.config) == L and capsys.readouterr().err == ""
    with SourcesGone(built["sources"], "data"):  # the preprocessed data gone: 128, with one warning line
        assert conditioned_seq_len(None, exported.config) is None
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("warning:") and "128 tokens" in err[0]
        assert SamplerOptions().resolve("semdlm_plus", None, 4, None, None).seq_len == 128
        assert conditioned_seq_len(None, exported.config, given=32) is None and capsys.readouterr().err == ""
        new = load_export(built["export"]).config
        assert conditioned_seq_len(None, new) == L and capsys.readouterr().err == ""
    with SourcesGone(built["sources"], "neighbors"), pytest.raises(ArtifactError, match="does not exist"):
        load_export(old)  # as before: an old export needs its neighbour artifact


def test_evaluate_reads_the_neighbour_tables_once(built, tmp_path):
    old = strip_to_old(built["export"], tmp_path / "old")
    for model, where in ((built["export"], built["export"] / "neighbors"), (old, built["sources"] / "neighbors")):
        LOADS.clear()
        evaluate(model, tmp_path / f"eval_{model.name}")  # test NELBO, basin rate, the Eq 23 S+ of lambda_sem 0.5
        assert dict(LOADS) == {str(where.resolve()): 1}

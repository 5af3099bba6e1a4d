"""Data streams (pipeline/training/streams.py): the ``data`` config, manifest checks of each stream
(a local directory stands in for the remote, another for the cache), validation row allocation and
preprocess's upload. The real mixture trains in tests/integration/test_streams.py."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from pipeline.common.artifacts import ArtifactError, ConfigError, StageRun, stage_errors
from pipeline.core.kernels import KernelConfig
from pipeline.training.components import load_data_upstream
from pipeline.training.config import load_config
from pipeline.training.streams import allocate, check_cached_index, parse_data

MASK = KernelConfig.preset("mask")


def fake_artifact(directory: Path, identity="vocab-sha256:a", seq_len=16, mode="lm1b",
                  splits=("train", "validation"), index_text='{"version": 2, "shards": []}') -> Path:
    tokenizer = {"identity": identity, "special_ids": {"mask": 3, "pad": 0}, "vocab_size": 40}
    run = StageRun("preprocess", directory, config={"mode": mode, "seq_len": seq_len}, tokenizer=tokenizer, force=True)
    run.extra.update(splits=list(splits), seq_len=seq_len)
    with run as tmp:
        for split in splits:
            (tmp / split).mkdir()
            (tmp / split / "index.json").write_text(index_text)
        (tmp / "unigram_counts.npy").write_bytes(b"counts")
    return directory


def spec(streams, **data):
    return parse_data({"streams": streams, **data}, None)


# --------------------------------------------------------------------------- config
def test_preprocessed_is_one_local_stream_and_streams_come_from_yaml(tmp_path):
    data = load_config(None, [], preprocessed="artifacts/lm1b").data_spec()
    assert not data.from_streams and data.validation == data.streams
    assert [(s.name, s.remote, s.local, s.weights()) for s in data.streams] == [("lm1b", None, "artifacts/lm1b", {})]
    cfg = load_config(Path(__file__).parents[2] / "configs" / "mixture_example.yaml")
    data = cfg.data_spec()
    assert data.from_streams and [s.name for s in data.streams] == ["lm1b", "web"]
    assert [s.proportion for s in data.streams] == [0.7, 0.3] and data.validation == data.streams
    over = load_config(None, ["data.streams=[{remote: s3://b/x, local: /c/x, choose: 100}, {local: /a/y}]",
                              "data.download_timeout=5"]).data_spec()
    assert [(s.name, s.choose) for s in over.streams] == [("x", 100), ("y", None)] and over.download_timeout == 5
    assert load_config(None, []).data_spec() is None


@pytest.mark.parametrize("data, message", [
    ({"streams": []}, "data.streams must be a non-empty list"),
    ({"streams": "s3://b/x"}, "data.streams must be a non-empty list"),
    ({"streams": ["s3://b/x"]}, r"data.streams\[0\] must be a mapping"),
    ({"streams": [{"remote": "s3://b/x"}]}, r"data.streams\[0\]: local is required \(the per-node cache"),
    ({"streams": [{"local": ""}]}, r"data.streams\[0\].local must be a non-empty string"),
    ({"streams": [{"local": "a", "weight": 1}]}, r"unknown keys \['weight'\]"),
    ({"streams": [{"local": "a", "proportion": 0.5, "repeat": 2}]}, "at most one of proportion, repeat, choose"),
    ({"streams": [{"local": "a", "proportion": 0.7}, {"local": "b"}]}, "give it on every stream or on none"),
    ({"streams": [{"local": "a", "proportion": -1}]}, r"proportion must be a positive number, got -1"),
    ({"streams": [{"local": "a", "proportion": "lots"}]}, "proportion must be a positive number"),
    ({"streams": [{"local": "a", "choose": 1.5}]}, "choose must be a positive integer"),
    ({"streams": [{"local": "a", "repeat": float("inf")}]}, "repeat must be a positive number"),
    ({"streams": [{"local": "x/a"}, {"local": "y/a"}]}, r"names must be unique, \['a'\] used twice \(set name:"),
    ({"streams": [{"local": "a", "name": "p"}, {"local": "a/", "name": "q"}]}, "local directories must be unique"),
    ({"streams": [{"local": "a", "repeat": 2}], "epoch_size": 10}, "epoch_size applies to proportion"),
    ({"streams": [{"local": "a"}], "epoch_size": 0}, "data.epoch_size must be a positive integer"),
    ({"streams": [{"local": "a"}], "download_retry": -1}, "download_retry must be an integer >= 0"),
    ({"streams": [{"local": "a"}], "validation_streams": []}, "data.validation_streams must be a non-empty list"),
    ({"stream": [{"local": "a"}]}, r"data: unknown keys \['stream'\]"),
])
def test_bad_data_configs_fail_with_the_key_named(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [], data=data)


def test_data_must_be_a_mapping_and_not_given_twice():
    with pytest.raises(ConfigError, match="data must be of type dict"):
        load_config(None, ["data=[1, 2]"])
    with pytest.raises(ConfigError, match="either as --preprocessed DIR .* or as data.streams, not both"):
        load_config(None, ["data.streams=[{local: a}]"], preprocessed="b")
    # --preprocessed with separate validation streams is fine
    data = load_config(None, ["data.validation_streams=[{local: v}]"], preprocessed="b").data_spec()
    assert [s.local for s in data.streams] == ["b"] and [s.local for s in data.validation] == ["v"]


# --------------------------------------------------------------------------- manifests
def test_remote_manifests_are_fetched_into_the_cache_and_checked(tmp_path):
    remote, cache = tmp_path / "remote", tmp_path / "cache"
    fake_artifact(remote / "a")
    fake_artifact(remote / "b")
    data = spec([{"remote": str(remote / "a"), "local": str(cache / "a"), "proportion": 0.7},
                 {"remote": str(remote / "b"), "local": str(cache / "b"), "proportion": 0.3}])
    up = load_data_upstream(data, None, MASK)
    assert up.preprocessed == cache / "a" and up.seq_len == 16 and up.vocab_size == 40
    assert (cache / "a" / "manifest.json").read_bytes() == (remote / "a" / "manifest.json").read_bytes()
    assert not (cache / "a" / "train").exists()  # only the manifest: shards come with the StreamingDataset
    refs = up.references()
    assert refs["preprocessed"] == str((cache / "a").resolve()) and refs["preprocessed_manifest_sha256"]
    assert [(r["name"], r["proportion"]) for r in refs["streams"]] == [("a", 0.7), ("b", 0.3)]
    assert "validation_streams" not in refs  # the same streams
    assert not list(cache.glob("*/.*.part*"))


@pytest.mark.parametrize("change, message", [
    ({"identity": "vocab-sha256:other"}, "has tokenizer identity 'vocab-sha256:other', the first stream 'a' has"),
    ({"seq_len": 32}, "has seq_len 32, the first stream 'a' has 16"),
    ({"mode": "owt"}, "has mode 'owt', the first stream 'a' has 'lm1b'"),
    ({"splits": ("train",)}, r"split 'validation' missing \(has \['train'\]\); rerun preprocess"),
])
def test_a_mismatched_stream_stops_the_run_with_one_line_naming_it(change, message, tmp_path, capsys):
    fake_artifact(tmp_path / "remote_a")
    fake_artifact(tmp_path / "remote_b", **change)
    data = spec([{"name": "a", "remote": str(tmp_path / "remote_a"), "local": str(tmp_path / "cache_a")},
                 {"name": "web", "remote": str(tmp_path / "remote_b"), "local": str(tmp_path / "cache_b")}])
    with pytest.raises(SystemExit) as exc, stage_errors("pipeline/train.py"):
        load_data_upstream(data, None, MASK)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("pipeline/train.py: error: stream 'web' (")
    assert re.search(message, err), err


def test_missing_or_incomplete_remotes_name_the_stream(tmp_path):
    data = spec([{"name": "gone", "remote": str(tmp_path / "nowhere"), "local": str(tmp_path / "cache")}])
    with pytest.raises(ArtifactError, match=r"stream 'gone' .*: cannot read .*nowhere/manifest.json \(FileNotFound"):
        load_data_upstream(data, None, MASK)
    fake_artifact(tmp_path / "neighbors_like")
    data = spec([{"name": "nn", "local": str(tmp_path / "neighbors_like")}])
    with pytest.raises(ValueError, match="needs a neighbour table"):  # the neighbour checks still apply
        load_data_upstream(data, None, KernelConfig.preset("semdlm_plus", k_max=4))


def test_an_unreachable_cloud_remote_fails_fast_with_one_line(tmp_path, monkeypatch, capsys):
    """No network here: streaming's S3 downloader must fail at once, not hang (no credentials or no route)."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    data = spec([{"name": "bucket", "remote": "s3://semdlm-test-no-such-bucket/lm1b", "local": str(tmp_path / "c")}])
    start = time.monotonic()
    with pytest.raises(SystemExit), stage_errors("pipeline/train.py"):
        load_data_upstream(data, None, MASK, timeout=5)
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - start < 60
    assert "\n" not in err and "stream 'bucket' (s3://semdlm-test-no-such-bucket/lm1b): cannot read" in err


def test_a_cache_filled_from_another_version_is_refused(tmp_path):
    fake_artifact(tmp_path / "remote", index_text='{"version": 2, "shards": [1]}')
    data = spec([{"name": "a", "remote": str(tmp_path / "remote"), "local": str(tmp_path / "cache")}])
    up = load_data_upstream(data, None, MASK)
    (s, manifest), = up.train_streams
    check_cached_index(s, manifest, "train")  # nothing cached yet
    (tmp_path / "cache" / "train").mkdir()
    (tmp_path / "cache" / "train" / "index.json").write_text('{"version": 2, "shards": [1]}')
    check_cached_index(s, manifest, "train")  # the manifest's index
    (tmp_path / "cache" / "train" / "index.json").write_text('{"version": 2, "shards": [2]}')
    with pytest.raises(ArtifactError, match=r"stream 'a': the cache .* holds another version of .*remote"):
        check_cached_index(s, manifest, "train")


# --------------------------------------------------------------------------- validation rows, upload
def test_validation_rows_follow_the_mixture_within_each_streams_size():
    assert allocate(10, [0.7, 0.3], [100, 100]) == [7, 3]
    assert allocate(10, [0.7, 0.3], [2, 100]) == [2, 8]      # a short stream's share goes to the others
    assert allocate(50, [1.0, 1.0], [3, 4]) == [3, 4]        # fewer rows than wanted: all of them
    assert allocate(5, [1.0, 1.0, 1.0], [9, 9, 9]) == [2, 2, 1]
    assert allocate(16, [1.0], [28]) == [16]


def test_upload_sends_the_manifest_last_and_skips_an_up_to_date_remote(tmp_path, monkeypatch):
    import preprocess.upload as upload

    artifact = fake_artifact(tmp_path / "art")
    sent, real = [], upload._uploader

    def recording(local, remote):
        uploader = real(local, remote)
        original = uploader.upload_file
        uploader.upload_file = lambda name: (sent.append(f"{Path(local).name}/{name}"), original(name))
        return uploader

    monkeypatch.setattr(upload, "_uploader", recording)
    logs = []
    upload.upload_artifact(artifact, str(tmp_path / "remote"), log=logs.append)
    outputs = json.loads((artifact / "manifest.json").read_text())["outputs"]
    assert sent[-1] == "art/manifest.json" and len(sent) == len(outputs) + 1
    for rel in [*outputs, "manifest.json"]:
        assert (tmp_path / "remote" / rel).read_bytes() == (artifact / rel).read_bytes()
    upload.upload_artifact(artifact, str(tmp_path / "remote"), log=logs.append)
    assert logs[-1].endswith(": up to date") and len(sent) == len(outputs) + 1


def test_a_dataset_that_never_downloaded_does_not_lock_its_cache_for_the_next_run(tmp_path, monkeypatch):
    """streaming refuses a remote stream's cache still registered by a dataset without a filelock file
    (one killed before its first download, e.g. validation before the first evaluation): the next
    run failed with "Reused local directory". mark_registered creates the file at construction."""
    from streaming import MDSWriter, Stream, StreamingDataset

    from pipeline.training.data import mark_registered

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with MDSWriter(out=str(tmp_path / "remote" / "validation"), columns={"x": "int"}) as writer:
        for i in range(4):
            writer.write({"x": i})

    def build():
        stream = Stream(remote=str(tmp_path / "remote"), local=str(tmp_path / "cache"), split="validation")
        return StreamingDataset(streams=[stream], batch_size=1)

    dead = build()  # stands in for the killed run's dataset: registered, nothing downloaded
    with pytest.raises(ValueError, match="Reused local directory"):
        build()
    mark_registered(dead)
    assert build()[3]["x"] == 3

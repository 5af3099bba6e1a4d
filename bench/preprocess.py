"""Preprocess throughput vs a raw ``tokenizers`` batch encode, and peak memory vs corpus size.

    python bench/preprocess.py [--workers 2] [--repeat 10] [--worker-kind thread|process]

For each shared corpus (LM1B sentences, web documents) it measures, in the same run:
  * raw: ``Tokenizer.encode_batch_fast`` of every text (truncation/padding off, Rust threads on),
    texts already in memory — the speed of light for tokenisation alone;
  * stage: ``run_preprocess`` end to end (read, split, tokenise, pack, write zstd MDS shards,
    checksums, manifest) in a fresh process with its imports already loaded; the wall time of the
    whole process (interpreter start and ~5 s of torch/transformers imports that
    ``streaming`` pulls in) is printed next to it as the CLI figure;
and prints tokens/s of both and their ratio (target >= 0.7 with --workers 2), for each corpus as
shipped (medians of ``--trials`` alternating runs of each side: the LM1B sample is a 0.4 s job, so
one run is noisy) and repeated ``--repeat`` times (where the stage's fixed start-up cost is
amortised). It also reports the peak RSS of the stage process on the web corpus at 1x and Nx.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
sys.path.insert(0, str(REPO))


def _texts(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in path.open(encoding="utf-8") if line.strip()]
    return [line.rstrip("\n") for line in path.open(encoding="utf-8") if line.strip()]


def raw_tokens_per_s(texts: list[str]) -> tuple[float, int]:
    from pipeline.common.hf_assets import load_tokenizer
    from preprocess.tokenize import make_backend

    backend = make_backend(load_tokenizer().backend_tokenizer.to_str())
    start = time.perf_counter()
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
    ntok = sum(len(e.ids) for e in encodings)
    return ntok / (time.perf_counter() - start), ntok


# Peak memory is the kernel's high-water mark of the stage process's resident set (VmHWM in
# /proc/self/status): exact, no sampling. The stage is one process (tokeniser threads, no worker
# processes). Two other measures were tried and are wrong here: getrusage's ru_maxrss survives
# exec on Linux (a child reports the peak of the process that spawned it), and summing RSS over the
# process tree counts the whole parent again for every short-lived `git` child caught between
# fork and exec (one sample of that window once reported 2.0 GiB for a 1.1 GiB run).
_RUNNER = """
import json, sys, time
import streaming  # warm the heavy imports (torch, transformers) outside the timed region
from preprocess.build import run_preprocess
from preprocess.config import PreprocessConfig
inputs, out, mode, workers, kind = json.loads(sys.argv[1])
cfg = PreprocessConfig(mode=mode, workers=workers, worker_kind=kind, progress=False, inputs={"train": inputs})
t = time.perf_counter()
run_preprocess(cfg, out, force=True, log=lambda *_: None)
seconds = time.perf_counter() - t
status = open("/proc/self/status").read().split("VmHWM:")[1].split()
print(json.dumps({"seconds": seconds, "rss_kib": int(status[0])}))
"""


def stage_run(inputs: list[Path], out: Path, mode: str, workers: int, kind: str = "thread") -> dict:
    """One stage run in a fresh process: stage seconds (imports warm), CLI-like wall seconds
    (interpreter start + imports + stage), document tokens written, peak RSS MiB of the process."""
    start = time.perf_counter()
    spec = json.dumps([list(map(str, inputs)), str(out), mode, workers, kind])
    res = subprocess.run([sys.executable, "-c", _RUNNER, spec],
                         check=True, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    result = json.loads(res.stdout.strip().splitlines()[-1])
    stats = json.loads((out / "manifest.json").read_text())["stats"]["train"]
    # Count what the raw encode counts: document tokens, not the added [CLS]/[SEP]/separators.
    added = stats["documents"] * (2 if mode == "lm1b" else 1)
    return {"seconds": result["seconds"], "wall": wall, "doc_tokens": stats["tokens"] - added,
            "rss_mib": result["rss_kib"] / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-kind", choices=["thread", "process"], default="thread")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--trials", type=int, default=3, help="runs of each side on the corpora as shipped (medians)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        print("| corpus | raw tokenizers tok/s | "
              f"stage tok/s (--workers {args.workers} --worker-kind {args.worker_kind}) | "
              f"ratio (median of {args.trials}; min–max) | "
              "CLI wall s (interpreter + imports + stage) | CLI ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, path, mode in (("lm1b_sample/train.txt", CORPORA / "lm1b_sample" / "train.txt", "lm1b"),
                                 ("web_sample/train.jsonl", CORPORA / "web_sample" / "train.jsonl", "owt")):
            texts = _texts(path)
            raws, runs = [], []
            for _ in range(args.trials):  # alternate, so both sides see the same machine conditions
                raw, ntok = raw_tokens_per_s(texts)
                raws.append(raw)
                runs.append(stage_run([path], work / mode, mode, args.workers, args.worker_kind))
                if mode == "owt":  # same tokens as the raw encode
                    assert runs[-1]["doc_tokens"] == ntok, (runs[-1]["doc_tokens"], ntok)
            # lm1b truncates long sentences: rates are on the tokens encoded
            stages = [ntok / run["seconds"] for run in runs]
            ratios = sorted(st / rw for st, rw in zip(stages, raws))
            raw, stage, wall = median(raws), median(stages), median(run["wall"] for run in runs)
            print(f"| {name} | {raw:,.0f} | {stage:,.0f} | {stage / raw:.2f} ({ratios[0]:.2f}–{ratios[-1]:.2f}) | "
                  f"{wall:.1f} | {ntok / wall / raw:.2f} |")
        print(f"\n{args.repeat}x corpora (steady state: fixed start-up costs amortised):")
        print(f"| corpus x{args.repeat} | raw tokenizers tok/s | stage tok/s | ratio | CLI wall s | CLI ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        runs = {}
        for name, path, mode in (("lm1b_sample/train.txt", CORPORA / "lm1b_sample" / "train.txt", "lm1b"),
                                 ("web_sample/train.jsonl", CORPORA / "web_sample" / "train.jsonl", "owt")):
            big = work / f"x{args.repeat}_{path.name}"
            with big.open("wb") as fh:
                for _ in range(args.repeat):
                    fh.write(path.read_bytes())
            raw_big, ntok_big = raw_tokens_per_s(_texts(big))
            runs[mode] = stage_run([big], work / f"xn_{mode}", mode, args.workers, args.worker_kind)
            stage = ntok_big / runs[mode]["seconds"]
            print(f"| {name} | {raw_big:,.0f} | {stage:,.0f} | {stage / raw_big:.2f} | {runs[mode]['wall']:.1f} | "
                  f"{ntok_big / runs[mode]['wall'] / raw_big:.2f} |")
        web = CORPORA / "web_sample" / "train.jsonl"
        one = stage_run([web], work / "x1", "owt", args.workers, args.worker_kind)
        many = runs["owt"]
        size1, sizen = web.stat().st_size / 2**20, web.stat().st_size * args.repeat / 2**20
        scope = "imports included" if args.worker_kind == "thread" else "main process only, not its workers"
        print(f"\npeak RSS of the stage process (VmHWM, {scope}), owt mode, --workers {args.workers}:")
        print(f"  1x corpus ({size1:.0f} MiB): {one['rss_mib']:.0f} MiB in {one['seconds']:.1f} s")
        print(f"  {args.repeat}x corpus ({sizen:.0f} MiB): {many['rss_mib']:.0f} MiB in {many['seconds']:.1f} s")
        print(f"  ratio {many['rss_mib'] / one['rss_mib']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

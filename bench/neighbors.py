"""Full-vocabulary neighbor_index run: embedding vs search time and peak memory.

    python bench/neighbors.py [--cores 2] [--preprocessed DIR] [--index flat] [--k-max 64]

Builds a small real preprocess artifact (LM1B sample) unless ``--preprocessed`` is given, then runs
``python -m neighbor_index`` over the full vocabulary (30,522 bert-base-uncased tokens embedded
with the offline all-MiniLM-L6-v2 + faiss top-k search) as a child process pinned to ``--cores``
CPUs with as many threads. Reports, from that one run: wall time of the whole stage, the stage's
own embedding and search timings (manifest stats), the rest (imports, model load, tables, report,
checksums), CPU time, peak RSS of the child (``wait4`` rusage) and the ratio to the 90 s target.
The 1-minute load average before/after is printed: on a shared machine wall time includes waiting
for cores, CPU time does not.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
TARGET_S = 90.0
PROBES = ("king", "queen", "good", "paris", "computer")


def _preprocess(work: Path) -> Path:
    lines = (CORPORA / "lm1b_sample" / "train.txt").read_text(encoding="utf-8").splitlines()[:5000]
    (work / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = work / "preprocessed"
    subprocess.run([sys.executable, "-m", "preprocess", "--input", str(work / "train.txt"), "--out", str(out),
                    "--mode", "lm1b", "--no-progress"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return out


def _run_stage(preprocessed: Path, out: Path, cores: list[int], args) -> tuple[float, object]:
    cmd = [sys.executable, "-m", "neighbor_index", "--preprocessed", str(preprocessed), "--out", str(out),
           "--k-max", str(args.k_max), "--index", args.index, "--threads", str(len(cores)),
           "--device", args.device, "--no-progress", "--force"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(len(cores)))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, preexec_fn=lambda: os.sched_setaffinity(0, cores))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"neighbor_index failed with status {os.waitstatus_to_exitcode(status)}")
    return wall, usage


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=2, help="CPUs the stage is pinned to (and its threads)")
    p.add_argument("--preprocessed", type=Path, help="existing preprocess artifact (default: build one)")
    p.add_argument("--index", default="flat", choices=("flat", "ivf", "hnsw"))
    p.add_argument("--k-max", type=int, default=64)
    p.add_argument("--device", default="cpu", help="embedding device (cpu for the CPU target)")
    args = p.parse_args()
    available = sorted(os.sched_getaffinity(0))
    if args.cores > len(available):
        raise SystemExit(f"--cores {args.cores} but only {len(available)} CPUs are available")
    cores = available[:args.cores]

    with tempfile.TemporaryDirectory(prefix="bench-neighbors-") as tmp:
        work = Path(tmp)
        preprocessed = args.preprocessed or _preprocess(work)
        load_before = os.getloadavg()[0]
        wall, usage = _run_stage(preprocessed, work / "neighbors", cores, args)
        load_after = os.getloadavg()[0]
        manifest = json.loads((work / "neighbors" / "manifest.json").read_text())
        sys.path.insert(0, str(REPO))
        from neighbor_index.vocab import vocabulary_from_tokenizer
        from pipeline.common.neighbor_artifact import read_neighbor_arrays

        tables, _ = read_neighbor_arrays(work / "neighbors")
        tokens = vocabulary_from_tokenizer(None).tokens

    stats = manifest["stats"]
    embed_s, search_s = stats["embed_seconds"], stats["search_seconds"]
    cpu_s = usage.ru_utime + usage.ru_stime
    print(f"neighbor_index, {stats['vocab_size']} tokens, k_max {args.k_max}, index {args.index}, "
          f"{len(cores)} cores {cores}, device {args.device}, {os.cpu_count()} CPUs on host")
    print(f"  load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}")
    print(f"  total wall      {wall:7.1f} s   ({wall / TARGET_S:.2f} x the {TARGET_S:.0f} s target)")
    print(f"  embedding       {embed_s:7.1f} s   ({embed_s / wall:.0%} of total)")
    print(f"  search          {search_s:7.1f} s   ({search_s / wall:.0%} of total)")
    print(f"  other           {wall - embed_s - search_s:7.1f} s   (imports, model load, tables, report, checksums)")
    print(f"  CPU time        {cpu_s:7.1f} s   ({cpu_s / wall:.2f} cores busy on average)")
    print(f"  peak RSS        {usage.ru_maxrss / 1024:7.0f} MiB")
    if stats.get("recall") is not None:
        print(f"  recall@{args.k_max}       {stats['recall']:.4f} on {stats['recall_rows']} rows")
    ids = {t: i for i, t in enumerate(tokens)}
    for probe in PROBES:
        row = tables["neighbors"][ids[probe], :8]
        print(f"  {probe:>9}: {' '.join(tokens[j] for j in row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

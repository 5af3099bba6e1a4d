"""Vocabulary embeddings: a sentence-transformers pass over the token strings, or the
input-embedding matrix of a model (HF model dir or semdlm checkpoint/export)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.hf_assets import resolve_name

# Preferred tensor names, most specific first; any 2-D tensor whose name contains "embed" and
# that has one row per vocabulary entry is a candidate.
_PREFERRED_KEYS = ("word_embeddings", "embed_tokens", "tok_embeddings", "wte", "embed.weight")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Unit-norm float32 rows (zero rows stay zero: cosine 0 to everything)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------- sentence-transformers
def model_weight_files(name_or_path: str) -> list[Path]:
    """Weight files of a local model directory (fingerprinted as stage inputs); [] for hub ids."""
    path = Path(resolve_name(name_or_path))
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.suffix == ".safetensors" or p.suffix in _TORCH_SUFFIXES)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def embed_texts(texts: list[str], name_or_path: str | None = None, *, batch_size: int = 1024,
                device: str = "auto", threads: int | None = None, progress: bool = True) -> np.ndarray:
    """Unit-norm float32 [N, d] sentence embeddings of ``texts``.

    Short strings (vocabulary entries) make this latency-bound: sentence-transformers sorts by
    length so every batch is padded to nearly its own length, a large batch amortises the Python
    overhead, and inference mode skips autograd bookkeeping. Duplicate strings are embedded once
    (``##king`` reads as ``king``: ~15% of a WordPiece vocabulary).
    """
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads or os.cpu_count() or 1)
    name = resolve_name(name_or_path)
    try:
        model = SentenceTransformer(name, device=resolve_device(device))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load sentence-transformers model {name!r}: {exc}") from None
    unique, inverse = np.unique(np.asarray(texts, dtype=str), return_inverse=True)
    with torch.inference_mode():
        emb = model.encode(unique.tolist(), batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=progress)
    return normalize_rows(emb)[inverse]


# --------------------------------------------------------------------------- model input embeddings
@dataclass
class EmbeddingTensor:
    """Where a model's input-embedding matrix lives (found from headers, nothing loaded)."""

    file: Path
    key: str
    shape: tuple[int, ...]


def _tensor_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="np") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    return {k: tuple(v.shape) for k, v in _torch_state(file).items()}


def _torch_state(file: Path) -> dict:
    import torch

    state = torch.load(file, map_location="cpu", weights_only=True)
    for nested in ("module", "model", "state_dict"):  # DeepSpeed / Lightning style wrappers
        if isinstance(state, dict) and isinstance(state.get(nested), dict):
            state = state[nested]
    return {k: v for k, v in state.items() if hasattr(v, "shape")}


def find_embedding_tensor(path: str | os.PathLike, vocab_size: int, key: str | None = None) -> EmbeddingTensor:
    """Locate the [vocab_size, d] input-embedding matrix in a checkpoint file or directory."""
    path = Path(path)
    files = [path] if path.is_file() else model_weight_files(str(path)) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"--embeddings-from-model {str(path)!r}: no .safetensors/.pt/.bin weights found")
    seen = []
    for file in files:
        shapes = _tensor_shapes(file)
        if key is not None:
            if key in shapes:
                return _checked(EmbeddingTensor(file, key, shapes[key]), vocab_size)
            continue
        names = [k for k, s in shapes.items() if "embed" in k.lower() and len(s) == 2]
        seen += [f"{k} {list(shapes[k])}" for k in names]
        fits = [k for k in names if shapes[k][0] == vocab_size]
        if fits:
            rank = lambda k: next((i for i, p in enumerate(_PREFERRED_KEYS) if p in k), len(_PREFERRED_KEYS))  # noqa: E731
            best = min(fits, key=rank)
            return EmbeddingTensor(file, best, shapes[best])
    if key is not None:
        raise ValueError(f"--embedding-key {key!r} is not a tensor of {str(path)!r}")
    raise ValueError(f"{str(path)!r} has no input-embedding matrix with {vocab_size} rows (the preprocess "
                     f"vocabulary size); embedding-like tensors found: {', '.join(seen) or 'none'}")


def _checked(found: EmbeddingTensor, vocab_size: int) -> EmbeddingTensor:
    if len(found.shape) != 2 or found.shape[0] != vocab_size:
        raise ValueError(f"tensor {found.key!r} of {str(found.file)!r} has shape {list(found.shape)}; "
                         f"expected [{vocab_size}, d] (the preprocess vocabulary size)")
    return found


def load_embedding_matrix(found: EmbeddingTensor) -> np.ndarray:
    """The located matrix as unit-norm float32 rows (cosine geometry, like the MiniLM path)."""
    if found.file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(found.file), framework="pt") as fh:  # "pt": bf16 tensors load too
            matrix = fh.get_tensor(found.key)
    else:
        matrix = _torch_state(found.file)[found.key]
    return normalize_rows(matrix.float().numpy())

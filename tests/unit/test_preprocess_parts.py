"""The preprocess stage's parts: the light tokenizer spec, the token dtype, the fast MDS row encoder
(the CLI runs on real text are in tests/integration/test_preprocess.py)."""
from __future__ import annotations

import numpy as np
import pytest

from preprocess.build import token_dtype, token_row_writer


def test_light_tokenizer_spec_matches_transformers_and_dtype_choice(tokenizer):
    from pipeline.common.hf_assets import load_tokenizer_spec, tokenizer_info

    assert load_tokenizer_spec().info() == tokenizer_info(tokenizer)  # identity, size, special ids
    assert token_dtype(30522) == "uint16" and token_dtype(65535) == "uint16" and token_dtype(65536) == "int32"


def test_fast_row_encoding_equals_mdswriter(tmp_path):
    from streaming import MDSWriter

    columns = {"tokens": "ndarray:uint16:16"}
    fast = token_row_writer(out=str(tmp_path / "a"), columns=columns)
    generic = MDSWriter(out=str(tmp_path / "b"), columns=columns)
    row = np.arange(16, dtype=np.uint16) * 4099
    assert fast.encode_sample({"tokens": row}) == generic.encode_sample({"tokens": row})
    with pytest.raises(ValueError):
        fast.encode_sample({"tokens": row.astype(np.int32)})

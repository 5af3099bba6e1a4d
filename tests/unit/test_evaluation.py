"""Evaluation metrics: entropy / distinct-n / repetition / basin formulas, Gen-PPL against a hand
computation for tiny judges (HF GPT-2 and the pipeline's AR export), test NELBO on an MDS split."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.evaluation.diversity import (
    distinct_n,
    pooled_distinct_n,
    repetition_rate,
    sample_metrics,
    semantic_basin_rate,
    unigram_entropy,
)
from pipeline.evaluation.genppl import chunk_for_judge, generative_perplexity, load_judge

TEXTS = ["the cat sat on the mat and looked at the dog for a long time",
         "a short one", "numbers 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21"]


# --------------------------------------------------------------------------- diversity formulas
def test_entropy_and_distinct_n_by_hand():
    ids = [1, 1, 2, 3]
    assert unigram_entropy(ids) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert unigram_entropy([7] * 10) == 0.0
    assert unigram_entropy(list(range(128))) == pytest.approx(math.log(128))
    assert distinct_n(ids, 1) == pytest.approx(3 / 4)
    assert distinct_n([1, 2, 1, 2, 1], 2) == pytest.approx(2 / 4)  # (1,2) (2,1) (1,2) (2,1)
    assert distinct_n([1, 2, 1, 2, 1], 3) == pytest.approx(2 / 3)
    assert distinct_n([1], 2) == 0.0
    assert pooled_distinct_n([[1, 2], [1, 2], [3, 4]], 2) == pytest.approx(2 / 3)


def test_repetition_and_basin_rates_by_hand():
    assert repetition_rate([[1, 2, 1, 3]], window=1) == 0.0
    assert repetition_rate([[1, 2, 1, 3]], window=2) == pytest.approx(1 / 3)
    assert repetition_rate([[5, 5, 5], [1, 2]], window=4) == pytest.approx(2 / 3)  # 2 of 3 counted positions
    neighbors = torch.tensor([[1, 2], [0, 3], [3, 0], [2, 1], [0, 1]])  # token 4 lists 0 and 1
    # pairs at distance 1: (0,1) yes, (1,4) yes (4 lists 1), (4,4) same token: skipped
    assert semantic_basin_rate([[0, 1, 4, 4]], neighbors, window=1, basin_k=2) == pytest.approx(1.0)
    # basin_k=1 (first column 1,0,3,2,0), distances 1 and 2: (0,1) yes, (1,4) no, (0,4) yes (4 lists 0),
    # (1,4) no; (4,4) skipped -> 2 of 4
    assert semantic_basin_rate([[0, 1, 4, 4]], neighbors, window=2, basin_k=1) == pytest.approx(2 / 4)


def test_sample_metrics_flags_low_entropy():
    rng = np.random.default_rng(0)
    diverse = rng.permutation(1000)[:200].tolist()  # 200 distinct tokens: entropy log 200 = 5.3
    collapsed = [3, 4] * 100
    m = sample_metrics([diverse, collapsed], neighbors=torch.zeros(1000, 2, dtype=torch.long))
    assert m["low_entropy_samples"] == [1] and m["entropy_per_sample"][0] > 4.8
    assert m["distinct_1"] == pytest.approx((1.0 + 2 / 200) / 2)


# --------------------------------------------------------------------------- Gen-PPL
@pytest.fixture(scope="module")
def hf_judge_dir(tmp_path_factory, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=8, n_embd=32, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(cfg)
    path = tmp_path_factory.mktemp("judge")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)  # the offline bert tokenizer serves as the judge's tokenizer
    return path


def hand_gen_ppl(texts, tok, logits_fn, context, bos):
    """Token by token: each chunk of context-1 judge tokens scored after [BOS], nothing shared."""
    total, count = 0.0, 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for j in range(0, len(ids), context - 1):
            chunk = [bos] + ids[j:j + context - 1]
            for pos in range(1, len(chunk)):
                logits = logits_fn(torch.tensor([chunk[:pos]]))[0, -1].double()
                total -= float(torch.log_softmax(logits, -1)[chunk[pos]])
                count += 1
    return math.exp(total / count), count


def test_gen_ppl_equals_hand_computation_hf_judge(hf_judge_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    judge = load_judge(str(hf_judge_dir))
    assert judge.context == 8 and judge.bos_id == tokenizer.cls_token_id
    assert len(chunk_for_judge(list(range(15)), 8, 0)) == 3  # 7 + 7 + 1 tokens
    got = generative_perplexity(TEXTS, judge, batch_size=3)
    model = AutoModelForCausalLM.from_pretrained(hf_judge_dir).eval()
    with torch.no_grad():
        want, count = hand_gen_ppl(TEXTS, tokenizer, lambda x: model(input_ids=x).logits, 8, tokenizer.cls_token_id)
    assert got["judge_tokens"] == count
    assert got["gen_ppl"] == pytest.approx(want, rel=1e-6)


def test_gen_ppl_with_ar_export_judge(tmp_path, tokenizer):
    from pipeline.common.export_artifact import save_export
    from pipeline.common.hf_assets import tokenizer_info
    from pipeline.core.model import AutoregressiveLM, ModelConfig

    torch.manual_seed(1)
    cfg = ModelConfig.preset("tiny", vocab_size=len(tokenizer), causal=True, max_seq_len=8)
    model = AutoregressiveLM(cfg)
    with torch.no_grad():
        torch.nn.init.normal_(model.backbone.head.weight, std=0.2)
    save_export(tmp_path / "ar", model, cfg, None, tokenizer_info(tokenizer), {}, "ar")
    judge = load_judge(str(tmp_path / "ar"))
    got = generative_perplexity(TEXTS, judge, batch_size=2)
    with torch.no_grad():
        want, count = hand_gen_ppl(TEXTS, tokenizer, lambda x: model(x), 8, tokenizer.cls_token_id)
    assert got["judge_tokens"] == count and got["gen_ppl"] == pytest.approx(want, rel=1e-6)


def test_unreachable_judge_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load judge"):
        load_judge(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- test NELBO
@pytest.mark.parametrize("kernel_name,bounds", [("mask", {"mdlm_continuous"}),
                                                ("uniform", {"udlm_continuous", "udlm_converted",
                                                             "ctelbo_continuous"})])
def test_nelbo_on_mds_split_reproducible(tmp_path, kernel_name, bounds):
    from streaming import MDSWriter

    from pipeline.common.export_artifact import Exported
    from pipeline.core.kernels import KernelConfig, build_kernel
    from pipeline.core.model import DiffusionTransformer, ModelConfig
    from pipeline.evaluation.nelbo import evaluate_nelbo, read_test_sequences

    V, L, PAD, MASK = 64, 12, 0, 63
    rng = np.random.default_rng(0)
    with MDSWriter(out=str(tmp_path / "test"), columns={"tokens": f"ndarray:int32:{L}"}) as w:
        for i in range(5):
            x = np.full(L, PAD, np.int32)
            x[: 6 + i] = rng.integers(1, 60, 6 + i)
            w.write({"tokens": x})
    seqs = read_test_sequences(tmp_path / "test")
    assert seqs.shape == (5, L)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny")
    model = DiffusionTransformer(cfg).eval()
    kernel = build_kernel(KernelConfig.preset(kernel_name), V, mask_id=MASK)
    exported = Exported(model, cfg, "diffusion", kernel, {}, {}, MASK)
    a = evaluate_nelbo(exported, seqs, PAD, batch_size=2, t_draws=3, seed=0, progress=False)
    b = evaluate_nelbo(exported, seqs, PAD, batch_size=2, t_draws=3, seed=0, progress=False)
    (nats_a, tokens_a), (nats_b, _) = a.pop("per_sequence"), b.pop("per_sequence")
    assert a == b and torch.equal(nats_a, nats_b) and set(a["candidates"]) == bounds
    assert int(tokens_a.sum()) == a["tokens"] and float(nats_a.sum()) == pytest.approx(a["nelbo_nats"], rel=1e-12)
    assert a["nats_per_token"] == min(a["candidates"].values()) == a["candidates"][a["bound"]]  # the tightest
    assert a["stderr"] > 0 and a["stderr_method"] == "collapsed strata"
    assert a["stderr_iid_draws"] > 0 and a["stderr_sequences"] > 0
    assert a["tokens"] == int((seqs != PAD).sum())
    counts = np.bincount(seqs[seqs != PAD].numpy(), minlength=V)  # the unigram reference, paired per sequence
    u = evaluate_nelbo(exported, seqs, PAD, batch_size=2, t_draws=3, seed=0, progress=False,
                       unigram_counts=counts)["unigram"]
    assert u["tokens"] == a["tokens"] and u["margin_stderr"] > 0
    assert u["margin_stderrs"] == pytest.approx((u["nats_per_token"] - a["nats_per_token"]) / u["margin_stderr"])
    c = evaluate_nelbo(exported, seqs, PAD, batch_size=2, t_draws=3, seed=1, progress=False)
    assert c["nelbo_nats"] != a["nelbo_nats"]  # the seed is what fixes the estimate
    # a zero-initialised head predicts uniformly (over the 63 non-mask tokens for mask): NELBO/token ~ log V
    assert a["nats_per_token"] == pytest.approx(math.log(63 if kernel_name == "mask" else 64), rel=0.35)

"""lm-evaluation-harness on this pipeline's exports (pipeline/lm_eval.py, pipeline/evaluation/lm_eval_model.py),
offline: local tasks in YAML over local jsonl files, a multiple-choice and a generation task."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
from test_sampling_cli import exports  # noqa: F401  (the fixture: tiny semdlm_plus, mask and AR exports)

pytest.importorskip("lm_eval")

from pipeline.evaluation.lm_eval_model import SemdlmLM  # noqa: E402

TEXTS = ["the cat sat on the mat", "he drank a cup of tea in the morning", "the sun rises in the east",
         "they walked home after the game"]


class Req:
    def __init__(self, *args):
        self.args = args


def _encode(lm: SemdlmLM, text: str) -> list[int]:
    return lm.codec.backend.encode(text, add_special_tokens=False).ids


def test_ar_loglikelihood_is_the_exact_sum_of_log_probabilities(exports):  # noqa: F811
    lm = SemdlmLM(model_dir=str(exports["ar"]))
    ctx, cont = "the cat sat", " on the mat"
    (ll, greedy), = lm.loglikelihood([Req(ctx, cont)])
    ids = _encode(lm, ctx) + _encode(lm, cont)
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm.exported.model(x, torch.ones_like(x, dtype=torch.bool)).double(), -1)[0]
    p = len(_encode(lm, ctx))
    exact = sum(float(logp[i - 1, ids[i]]) for i in range(p, len(ids)))
    assert ll == pytest.approx(exact, abs=1e-6)
    assert greedy == all(int(logp[i - 1].argmax()) == ids[i] for i in range(p, len(ids)))
    (rolled,) = lm.loglikelihood_rolling([Req(TEXTS[0])])
    ids = _encode(lm, TEXTS[0])
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm.exported.model(x, torch.ones_like(x, dtype=torch.bool)).double(), -1)[0]
    assert rolled == pytest.approx(sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids))), abs=1e-6)


def test_diffusion_rolling_equals_the_evaluate_stages_bound_within_its_stderr(exports):  # noqa: F811
    from pipeline.evaluation.nelbo import evaluate_nelbo

    lm = SemdlmLM(model_dir=str(exports["mask"]), t_draws=32, seed=0)
    rolled = lm.loglikelihood_rolling([Req(t) for t in TEXTS])
    rows = [_encode(lm, t) for t in TEXTS]
    x = torch.full((len(rows), lm.window), lm.pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        x[i, :len(row)] = torch.tensor(row)
    stage = evaluate_nelbo(lm.exported, x, lm.pad_id, t_draws=32, seed=1, progress=False)  # another seed
    se = stage["stderr"] * stage["tokens"]
    assert stage["tokens"] == sum(map(len, rows))
    assert abs(-sum(rolled) - stage["nelbo_nats"]) < 4 * 2 ** 0.5 * se, (-sum(rolled), stage["nelbo_nats"], se)
    assert rolled == lm.loglikelihood_rolling([Req(t) for t in TEXTS])  # seeded: the same numbers again


def test_diffusion_loglikelihood_holds_the_context_clean(exports):  # noqa: F811
    for name in ("mask", "semdlm_plus"):
        lm = SemdlmLM(model_dir=str(exports[name]), t_draws=8)
        inputs, forward = [], lm.exported.model.forward

        def recording(x, *args, inputs=inputs, forward=forward, **kwargs):
            inputs.append(x.clone())
            return forward(x, *args, **kwargs)

        lm.exported.model.forward = recording
        ctx, cont = "the cat sat", " on the mat"
        (ll, greedy), = lm.loglikelihood([Req(ctx, cont)])
        context = torch.tensor(_encode(lm, ctx))
        assert inputs and all(torch.equal(x[0, :len(context)], context) for x in inputs)
        assert ll < 0 and greedy is False
        # the continuation is corrupted: some draw changes it
        cont_ids = torch.tensor(_encode(lm, cont))
        assert any(not torch.equal(x[0, len(context):len(context) + len(cont_ids)], cont_ids) for x in inputs)


@pytest.mark.parametrize("name", ["ar", "mask"])
def test_generate_until_cuts_at_the_stop_string_and_max_gen_toks(exports, name):  # noqa: F811
    lm = SemdlmLM(model_dir=str(exports[name]), steps=8)
    assert 0 < len(lm._new_tokens("the cat sat", 12)) <= 12
    full = lm._generate("the cat sat", {"max_gen_toks": 12})
    words = full.split()
    stop = words[len(words) // 2]
    assert lm._generate("the cat sat", {"until": [stop], "max_gen_toks": 12}) == full[:full.index(stop)]
    (out,) = lm.generate_until([Req("the cat sat", {"until": [stop], "max_gen_toks": 12})])
    assert stop not in out


def _local_tasks(root):
    (root / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in [
        {"question": "the cat sat on the", "choices": ["mat", "quantum"], "answer": 0},
        {"question": "he drank a cup of", "choices": ["tea", "gravel"], "answer": 0},
        {"question": "the sun rises in the", "choices": ["east", "piano"], "answer": 0}]))
    (root / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in [
        {"prompt": "the president said", "target": "that"}, {"prompt": "in the morning", "target": "the"}]))
    (root / "semdlm_local_mc.yaml").write_text(textwrap.dedent(f"""\
        task: semdlm_local_mc
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {root / 'mc.jsonl'}}}}}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        metric_list: [{{metric: acc}}]
        """))
    (root / "semdlm_local_gen.yaml").write_text(textwrap.dedent(f"""\
        task: semdlm_local_gen
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {root / 'gen.jsonl'}}}}}
        test_split: test
        output_type: generate_until
        doc_to_text: "{{{{prompt}}}}"
        doc_to_target: "{{{{target}}}}"
        generation_kwargs: {{until: ["."], max_gen_toks: 8}}
        metric_list: [{{metric: exact_match}}]
        """))


@pytest.mark.parametrize("name", ["ar", "mask"])
def test_cli_runs_local_tasks_offline(exports, tmp_path, monkeypatch, capsys, name):  # noqa: F811
    from pipeline.lm_eval import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _local_tasks(tmp_path)
    out = tmp_path / "out"
    assert main(["--model-dir", str(exports[name]), "--tasks", "semdlm_local_mc,semdlm_local_gen", "--include_path",
                 str(tmp_path), "--output_path", str(out), "--t-draws", "4", "--steps", "8"]) == 0
    table = capsys.readouterr().out
    assert "semdlm_local_mc" in table and "acc" in table and "exact_match" in table
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert 0.0 <= results["semdlm_local_mc"]["acc,none"] <= 1.0
    assert results["semdlm_local_gen"]["exact_match,none"] in (0.0, 0.5, 1.0)
    assert main(["--model-dir", str(exports[name]), "--model", "hf"]) == 2  # the command sets --model

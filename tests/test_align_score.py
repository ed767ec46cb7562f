"""lna-align's score stage against the released scorer's computation, done plainly.

The reference re-enacts NJUNLP/MAPO Preprocess/PPL_batched.py with plain transformers in
float64: the prompt + response split at '### Response:', NLLB tokenizer with src_lang,
labels padded to the longest of a batch of at most 20 references with -100, CrossEntropyLoss
per row then .mean(), 1 / that. "released" is that value; "clean" is the same with each
reference alone in its batch (no padding), i.e. the mean over its own tokens.
"""
import re

import numpy as np
import pytest
import torch

from align_tiny import build_tiny_nllb
from lna.core import jsonl
from lna.align import score
from lna.core.config import load as load_config
from lna.inputs.data import Question
from lna.core.errors import LnaError

TEMPLATE = load_config("models")["templates"]["mathoctopus"]
ZH = ["小明有 5 个苹果 <<2+3=5>>。答案是 5。#### 5", "他有 7 个。", "  5 个苹果，再加 2 个是 7 个。\n答案：7  "]
EN_BASE = ["He has 5 apples. The answer is 5.", "5 + 2 = <<5+2=7>>7 apples.\n#### 7", "It is 7.",
           "He has 5 apples. The answer is 5.",  # a duplicate: dropped
           "Loop.\nLoop.\nThe answer is 5."]  # a repeated line: dropped
EN = EN_BASE + [f"Step {i}: he buys {i} apples and has {5 + i} apples." + " More." * (i % 4) for i in range(21)]
DE = ["Er hat 5 Äpfel.", "Die Antwort ist 7."]


def questions():
    def q(key, lang, responses):
        name = {"en": "English", "zh": "Chinese", "de": "German"}[lang]
        return Question(key, lang, "How many apples?", "7", TEMPLATE.format(language=name, query="How many apples?"),
                        responses)

    return [q("t/zh/0", "zh", ZH), q("t/en/0", "en", EN), q("t/de/0", "de", DE), q("t/de/1", "de", ["Nichts."]),
            q("t/en/1", "en", ["The answer is 3."])]


@pytest.fixture(scope="module")
def nllb(tmp_path_factory):
    return build_tiny_nllb(tmp_path_factory.mktemp("nllb"), ZH + EN + DE + ["Nichts.", "The answer is 3."])


def released(model, tok, prompt, generated, en_answers, src_code, batch):
    """PPL_batched.py's reward list for one response, re-enacted (float64, plain calls)."""
    def preprocess(s):  # extract_mutliL_en.py
        return re.sub(r"\<<.*?\>>", "", s.split("####")[0].strip())

    collected = []
    for a in map(preprocess, en_answers):
        lines = a.replace("\n\n", "\n").split("\n")
        if a not in collected and max(lines.count(x) for x in lines) < 2:
            collected.append(a)
    out = []
    for i in range(0, len(collected), batch):
        labels = collected[i:i + batch]
        outputs = [prompt + generated for _ in labels]
        prediction = [o.split("### Response:")[1].strip().split("####")[0].strip() for o in outputs]
        prediction = [re.sub(r"\<<.*?\>>", "", p) for p in prediction]
        labels = [re.sub(r"\<<.*?\>>", "", x).split("####")[0].strip() for x in labels]
        tok.src_lang = src_code
        x = tok(prediction, return_tensors="pt", padding="longest", truncation=True, max_length=512)
        tok.src_lang = "eng_Latn"
        y = tok(labels, return_tensors="pt", padding="longest", truncation=True, max_length=512)
        y.input_ids[y.input_ids == tok.pad_token_id] = -100
        with torch.no_grad():
            logits = model(**x, labels=y.input_ids).logits
        loss = torch.nn.CrossEntropyLoss(reduction="none")
        for r in range(logits.size(0)):
            out.append(1 / loss(logits[r].view(-1, logits.size(-1)), y.input_ids[r].view(-1)).mean().item())
    return out


def reference_scores(nllb, dtype):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(nllb, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(nllb)
    qs = {q.key: q for q in questions()}
    out = {}
    for key, code in (("t/zh/0", "zho_Hans"), ("t/de/0", "deu_Latn"), ("t/de/1", "deu_Latn")):
        q, en = qs[key], qs["t/en/0"].responses if key != "t/de/1" else qs["t/en/1"].responses
        out[key] = [(released(model, tok, q.prompt, g, en, code, 1), released(model, tok, q.prompt, g, en, code, 20))
                    for g in q.responses]
    return out


@pytest.fixture(scope="module")
def refs(nllb):
    return {torch.float64: reference_scores(nllb, torch.float64), torch.float32: reference_scores(nllb, torch.float32)}


SETTINGS = {"model": "tiny", "dtype": "float64"}


def run_score(nllb, path, dtype="float64", budget=97):
    return score.score(questions(), "en", path, settings=SETTINGS,
                       translator=lambda: score.Translator(nllb, device="cpu", dtype=dtype, token_budget=budget))


def test_scores_equal_the_released_computation_in_float64(nllb, refs, tmp_path):
    got = {r["key"]: r for r in run_score(nllb, tmp_path / "scores.jsonl")}
    ref = refs[torch.float64]
    assert len(got["t/zh/0"]["references"]) == len(EN) - 2 == 24  # 20 + 4: two released batches
    for key, per_response in ref.items():
        for row, (clean, rel) in zip(got[key]["responses"], per_response):
            np.testing.assert_allclose(row["clean"], clean, rtol=1e-10)
            np.testing.assert_allclose(row["released"], rel, rtol=1e-10)
            assert row["score_clean"] == pytest.approx(np.mean(clean), rel=1e-10)
            assert row["score_released"] == pytest.approx(np.mean(rel), rel=1e-10)
            assert row["tokens"] == [round(c * n) for c, n in zip(row["clean"], row["nll"])]
    # the padding artefact is real: some reference is shorter than its batch's longest
    assert any(r["padded"] != r["tokens"] for r in got["t/zh/0"]["responses"])
    assert len({round(r["score_clean"], 9) for r in got["t/zh/0"]["responses"]}) == len(ZH)


def test_float32_error_within_twice_plain_torch(nllb, refs, tmp_path):
    got = {r["key"]: r for r in run_score(nllb, tmp_path / "scores.jsonl", dtype="float32", budget=4096)}
    exact, plain = refs[torch.float64], refs[torch.float32]
    err_ours = err_plain = 0.0
    for key in exact:
        for row, e, p in zip(got[key]["responses"], exact[key], plain[key]):
            err_ours = max(err_ours, np.max(np.abs(np.array(row["released"]) - e[1]) / np.array(e[1])))
            err_plain = max(err_plain, np.max(np.abs(np.array(p[1]) - e[1]) / np.array(e[1])))
    assert err_ours <= 2 * err_plain + 1e-7, (err_ours, err_plain)


def test_resume_skips_scored_questions_and_redoes_a_torn_one(nllb, tmp_path):
    path = tmp_path / "scores.jsonl"
    first = run_score(nllb, path)

    def refuse():
        raise AssertionError("nothing to score: the translator must not load")

    assert score.score(questions(), "en", path, settings=SETTINGS, translator=refuse) == first
    text = path.read_text()
    path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 40])  # the last record torn mid-line
    again = run_score(nllb, path)  # the torn question alone in its batch: float64 noise only
    assert again[:2] == first[:2] and again[2]["key"] == first[2]["key"]
    np.testing.assert_allclose(again[2]["responses"][0]["nll"], first[2]["responses"][0]["nll"], rtol=1e-12)
    assert len(jsonl.read(path, "scores", "")) == 3
    with pytest.raises(LnaError, match="other responses or scorer settings"):
        score.score(questions(), "en", path, settings={**SETTINGS, "dtype": "float32"}, translator=refuse)


def test_damage_before_the_last_line_is_an_error(nllb, tmp_path):
    path = tmp_path / "scores.jsonl"
    run_score(nllb, path)
    lines = path.read_text().split("\n")
    path.write_text("\n".join([lines[0][:50]] + lines[1:]))
    with pytest.raises(LnaError, match="scores.jsonl:1: not valid JSON"):
        run_score(nllb, path)


def test_pairing_errors(nllb, tmp_path):
    qs = [q for q in questions() if q.lang != "en"]
    with pytest.raises(LnaError, match="shares an id"):
        score.score(qs, "en", tmp_path / "s.jsonl", settings=SETTINGS, translator=None)
    with pytest.raises(LnaError, match="no language code xx_Xxxx"):
        score.Translator(nllb, device="cpu").encode(["a"], "xx_Xxxx")

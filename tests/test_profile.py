"""lna-profile end to end: store contents, resume without double counting, clear errors."""
import json

import numpy as np
import pytest

from conftest import interrupt_counting, one_line_error, profile_cli, write_jsonl
import naive
from lna.storage.store import open_store


@pytest.fixture
def dataset(tmp_path):
    """Three languages, shared prompts with several given responses, one prompt without."""
    recs = [
        {"lang": "en", "query": "What is 2+3?", "responses": [" 2+3 = 5. The answer is 5.", " Five.", " 5"]},
        {"lang": "zh", "query": "2加3等于多少？", "responses": [" 2加3等于5。答案是5。", " 五"]},
        {"lang": "Japanese", "query": "2たす3は？", "responses": [" 5です。"]},
        {"lang": "en", "query": "What is 7-4?", "answers": [{"generated": " 7-4 = 3."}]},
        {"lang": "zh", "instruction": "Verbatim prompt: 9-1=", "responses": ["8"]},
    ]
    return str(write_jsonl(tmp_path / "d.jsonl", recs))


def test_store_equals_naive_reference(tiny_models, dataset, tmp_path):
    out = tmp_path / "s.zarr"
    assert profile_cli("--model", tiny_models["llama"], "--dataset", dataset, "--out", str(out)) == 0
    store = open_store(out, allow_partial=False)
    assert store.languages == ["en", "zh", "ja"]
    # the responses file beside the store holds the exact tokens; rebuild samples from it
    from lna.inputs import data, responses

    _, qs = data.load(str(tmp_path / "s.responses.jsonl"))
    samples = responses.samples(qs)
    assert len(samples) == 8
    ref, amb = naive.counts(tiny_models["llama"], samples, store.languages)
    naive.assert_counts_equal(store.counts, ref, amb)
    assert store.tokens.tolist() == [sum(len(s.response) for s in samples if s.lang == k) for k in store.languages]
    assert store.meta["model"] == tiny_models["llama"] and store.meta["counted"] == "response-tokens"


def test_interrupt_and_resume_equals_uninterrupted(tiny_models, dataset, tmp_path, monkeypatch):
    args = ["--model", tiny_models["mistral"], "--dataset", dataset, "--token-budget", "32",
            "--checkpoint-every", "0"]
    whole = tmp_path / "whole.zarr"
    assert profile_cli(*args, "--out", str(whole)) == 0

    resume = interrupt_counting(monkeypatch, after=2)  # killed after two chunks
    cut = tmp_path / "cut.zarr"
    assert profile_cli(*args, "--out", str(cut)) == 130
    partial = open_store(cut)
    assert not partial.complete and 0 < partial.tokens.sum() < open_store(whole).tokens.sum()
    resume()
    assert profile_cli(*args, "--out", str(cut)) == 0
    a, b = open_store(whole), open_store(cut)
    assert b.complete and np.array_equal(a.counts, b.counts) and np.array_equal(a.tokens, b.tokens)
    # activation sums too, up to float64 rounding of the chunks' order
    for name in ("sums", "active_sums"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12, atol=1e-12)
    # a third run finds nothing to do and changes nothing
    assert profile_cli(*args, "--out", str(cut)) == 0
    assert np.array_equal(open_store(cut).counts, a.counts)


def test_samples_responses_once_and_reuses_them(tiny_models, tmp_path, monkeypatch):
    from lna.runners.hf import HFRunner

    ds = write_jsonl(tmp_path / "q.jsonl", [{"lang": "en", "query": f"q{i}"} for i in range(3)]
                     + [{"lang": "fr", "query": "bonjour"}])
    out = tmp_path / "gen.zarr"
    args = ["--model", tiny_models["llama"], "--dataset", ds, "--out", str(out), "-n", "2",
            "--max-new-tokens", "6"]
    assert profile_cli(*args) == 0
    recs = [json.loads(x) for x in (tmp_path / "gen.responses.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(len(r["response_ids"]) == 2 for r in recs)
    assert all(r["sampling"]["n"] == 2 for r in recs)

    def no_sampling(*a, **k):
        raise AssertionError("responses must be reused, not sampled again")

    monkeypatch.setattr(HFRunner, "generate", no_sampling)
    first = open_store(out).counts.copy()
    assert profile_cli(*args) == 0  # rerun: nothing sampled, nothing counted twice
    assert np.array_equal(open_store(out).counts, first)


@pytest.mark.parametrize("args,expect", [
    (["--langs", "xx"], "unknown language"),
    (["--langs", "th"], "the data has no th"),
    (["--dataset", "/no/such/file.jsonl"], "no such file"),
    (["--model", "/no/such/model"], "no such folder"),
    (["--model", "someorg/not-downloaded-model"], "huggingface-cli download"),
    (["--dtype", "float64"], "float64"),
    (["--samples", "0"], "not in the range x>=1"),
])
def test_bad_input_is_one_line(tiny_models, dataset, tmp_path, capsys, args, expect):
    base = {"--model": tiny_models["llama"], "--dataset": dataset, "--out": str(tmp_path / "o.zarr")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    code = profile_cli(*[x for kv in base.items() for x in kv])
    assert expect in one_line_error(capsys, code)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.responses.jsonl").exists()


def test_refuses_non_silu_model(tmp_path, dataset, capsys):
    from lna.models.tiny import build_tiny

    path = build_tiny(tmp_path / "gelu", "llama")
    cfg = json.loads((path / "config.json").read_text())
    cfg["hidden_act"] = "gelu"
    (path / "config.json").write_text(json.dumps(cfg))
    err = one_line_error(capsys, profile_cli("--model", str(path), "--dataset", dataset, "--out", str(tmp_path / "o.zarr")))
    assert "activation 'gelu' is not supported" in err and "LlamaForCausalLM" in err and "lna supports" in err


def test_refuses_store_of_another_model(tiny_models, dataset, tmp_path, capsys):
    out = str(tmp_path / "s.zarr")
    assert profile_cli("--model", tiny_models["llama"], "--dataset", dataset, "--out", out) == 0
    before = open_store(out).counts.copy()
    err = one_line_error(capsys, profile_cli("--model", tiny_models["mistral"], "--dataset", dataset, "--out", out))
    assert "different models" in err
    assert np.array_equal(open_store(out).counts, before)


def test_refuses_output_that_is_not_a_store(tiny_models, dataset, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    err = one_line_error(capsys, profile_cli("--model", tiny_models["llama"], "--dataset", dataset, "--out", str(target)))
    assert "not an lna count store" in err and target.read_text() == "keep me"

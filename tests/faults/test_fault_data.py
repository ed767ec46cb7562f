"""Fault injection, data files (lna.inputs.schema and the token-id checks of lna.inputs.responses):
each bad record is one line naming the file, the line and the field, before any output exists.

- dataset JSONL: "answers": 5, "answers": [{"text": "2"}], "responses": null, "responses":
  "two", "prompt": 5, "answers": "hello world" (never 11 one-character responses), "lang": 3,
  a float, a negative or an out-of-range token id, 3 response ids for the response "a", prompt
  ids that are not the prompt's tokens, fewer response_ids lists than responses -> lna-profile
  and lna-eval
- lna's responses file beside a store, with a damaged record ("responses": null, a float id)
  -> the rerun says which line and field, and writes nothing
- a responses file torn mid-record in the middle of a batch (sampling, --samples 4): the rerun
  drops the torn batch's complete records, samples that batch again, and ends with exactly
  one record per key and the counts of a run that never tore
"""
import json

import numpy as np
import pytest

from faults.faultkit import DATA, Unchanged, one_line, only, write_jsonl
from lna.inputs import responses
from lna.storage.store import open_store


@pytest.fixture(scope="module")
def tid(model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return {"id": responses.tokenizer_id(tok), "size": len(tok), "tok": tok}


def _with_ids(tid, prompt="Q: 1+1?\nA:", response="a", **change):
    tok = tid["tok"]
    ids = responses.encode(tok, prompt)
    rec = {"lang": "en", "prompt": prompt, "responses": [response], "tokenizer": tid["id"], "prompt_ids": ids,
           "response_ids": [responses.encode_response(tok, prompt, ids, response)]}
    return {**rec, **change}


CASES = {  # name: (record, words the message holds besides the file and line)
    "answers is a number": ({"lang": "en", "prompt": "p", "answers": 5}, ["'answers'", "array"]),
    "answers without generated": ({"lang": "en", "prompt": "p", "answers": [{"text": "2"}]},
                                  ["'answers[0]'", "generated"]),
    "responses null": ({"lang": "en", "prompt": "p", "responses": None}, ["'responses'", "array"]),
    "responses a string": ({"lang": "en", "prompt": "p", "responses": "two"}, ["'responses'", "array"]),
    "prompt a number": ({"lang": "en", "prompt": 5, "responses": ["x"]}, ["'prompt'", "string"]),
    "answers a string": ({"lang": "en", "prompt": "p", "answers": "hello world"}, ["'answers'", "array"]),
    "lang a number": ({"lang": 3, "prompt": "p", "responses": ["x"]}, ["'lang'", "string"]),
}
ID_CASES = {
    "float id": (lambda t: _with_ids(t, response_ids=[[97.0]]), ["'response_ids[0][0]'", "integer"]),
    "negative id": (lambda t: _with_ids(t, response_ids=[[-4]]), ["'response_ids[0][0]'", "negative"]),
    "id out of range": (lambda t: _with_ids(t, response_ids=[[t["size"] + 5]]),
                        ["'response_ids[0]'", "outside the tokenizer"]),
    "3 ids for 'a'": (lambda t: _with_ids(t, response_ids=[[97, 98, 99]]), ["'response_ids[0]'", "3 tokens", "'a'"]),
    "prompt ids not the prompt's": (lambda t: _with_ids(t, prompt_ids=[1, 50, 51]), ["'prompt_ids'", "not the tokens"]),
    "fewer id lists than responses": (lambda t: _with_ids(t, response_ids=[]), ["'response_ids'", "0 token lists"]),
}


def _check(lna, command_args, data, line, words, tmp_path):
    with Unchanged(tmp_path):
        one_line(lna(*command_args), f"{data}:{line}", *words)


@pytest.mark.parametrize("case", list(CASES) + list(ID_CASES))
def test_bad_record_is_one_line_naming_file_line_and_field(case, model, tid, made, tmp_path, lna):
    record, words = CASES[case] if case in CASES else (ID_CASES[case][0](tid), ID_CASES[case][1])
    data = write_jsonl(tmp_path / "d.jsonl", DATA[:2] + [record])  # the bad record on line 3
    out = tmp_path / "out"
    _check(lna, ["profile", "-q", "--model", model, "--dataset", data, "--out", out / "s.zarr"], data, 3, words,
           tmp_path)
    assert not out.exists()
    if case in ("answers a string", "float id"):  # lna-eval reads the same records
        _check(lna, ["eval", "--responses", data, "-o", out / "ev"], data, 3, words, tmp_path)
    if case in ("3 ids for 'a'", "id out of range"):  # lna-ablate counts the same tokens
        _check(lna, ["ablate", "-q", "--model", model, "--neurons", made["neurons"], "--responses", data,
                     "-o", out / "ab"], data, 3, words, tmp_path)


def test_answers_given_as_a_string_are_not_characters(model, tmp_path, lna):
    """The silent reading of the report: "hello world" counted as 11 one-character responses."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"lang": "en", "prompt": "p", "answers": "hello world"}])
    one_line(lna("profile", "-q", "--model", model, "--dataset", data, "--out", tmp_path / "s.zarr"),
             "'answers'", "got str 'hello world'")
    only(tmp_path, "d.jsonl")


@pytest.mark.parametrize("damage, words", [
    (lambda r: r.update(responses=None), ["'responses'", "array"]),
    (lambda r: r["response_ids"][0].__setitem__(0, 1.5), ["'response_ids[0][0]'", "integer"]),
])
def test_damaged_responses_file_beside_a_store(damage, words, made, model, tmp_path, lna):
    lines = made["responses"].read_text(encoding="utf-8").splitlines()
    recs = [json.loads(x) for x in lines]
    damage(recs[1])
    resp = write_jsonl(tmp_path / "s.responses.jsonl", recs)
    with Unchanged(tmp_path):
        one_line(lna("profile", "-q", "--model", model, "--dataset", made["data"], "--out", tmp_path / "s.zarr"),
                 f"{resp}:2", *words)


def test_torn_mid_batch_is_sampled_again_never_duplicated(model, tmp_path, lna, monkeypatch):
    monkeypatch.setattr(responses, "BATCH_QUESTIONS", 3)
    data = write_jsonl(tmp_path / "q.jsonl", [{"lang": "en", "query": f"What is {i}+2?"} for i in range(6)])
    args = ["profile", "-q", "--model", model, "--dataset", data, "-n", "4", "--max-new-tokens", "6"]
    assert lna(*args, "--out", tmp_path / "whole.zarr")[0] == 0
    whole = (tmp_path / "whole.responses.jsonl").read_text(encoding="utf-8")
    lines = whole.splitlines(keepends=True)
    assert len(lines) == 6
    torn = tmp_path / "cut.responses.jsonl"  # batch 1 whole, batch 2: one record, then half of the next
    torn.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2], encoding="utf-8")
    rc, _, err = lna(*args, "--out", tmp_path / "cut.zarr")
    assert rc == 0, err
    assert "torn last line" in err and "sampled again whole" in err, err
    keys = [json.loads(x)["key"] for x in torn.read_text(encoding="utf-8").splitlines()]
    assert len(keys) == len(set(keys)) == 6  # one record per key
    assert torn.read_text(encoding="utf-8") == whole  # the same responses (seeds by question)
    a, b = open_store(tmp_path / "whole.zarr"), open_store(tmp_path / "cut.zarr")
    assert b.complete and np.array_equal(a.counts, b.counts) and np.array_equal(a.tokens, b.tokens)
    assert lna(*args, "--out", tmp_path / "cut.zarr")[0] == 0  # and a third run changes nothing
    assert torn.read_text(encoding="utf-8") == whole


@pytest.mark.parametrize("damage, words", [
    (lambda r: r.update(response_ids=[[9999]]), ["'response_ids[0]'", "outside the tokenizer"]),
    (lambda r: r.update(response_ids=[r["response_ids"][0] + [65]]), ["'response_ids[0]'", "not the tokens"]),
    (lambda r: r["prompt_ids"].__setitem__(3, 100 if r["prompt_ids"][3] != 100 else 101),
     ["'prompt_ids'", "not the tokens"]),
])
def test_damaged_sampled_responses_are_not_trusted(damage, words, model, tmp_path, lna):
    """Sampled responses are read back with their ids (what was counted): ids the tokenizer
    does not have, or that are not the text's, are one line, not an IndexError or wrong counts."""
    data = write_jsonl(tmp_path / "q.jsonl", [{"lang": "en", "query": f"What is {i}+3?"} for i in range(2)])
    args = ["profile", "-q", "--model", model, "--dataset", data, "-n", "1", "--max-new-tokens", "5"]
    assert lna(*args, "--out", tmp_path / "s.zarr")[0] == 0
    resp = tmp_path / "s.responses.jsonl"
    recs = [json.loads(x) for x in resp.read_text(encoding="utf-8").splitlines()]
    damage(recs[1])
    write_jsonl(resp, recs)
    with Unchanged(tmp_path):
        one_line(lna(*args, "--out", tmp_path / "t.zarr", "--responses", resp), f"{resp}:2", *words)

"""Property-based tests of every reader of a file lna accepts: any bytes, any JSON value, and
records that are almost right (the right fields with values of any type) give either a valid
result or one LnaError (one line) - never another exception - and write nothing.

Readers: dataset JSONL (the study's format and lna's), MGSM TSV and MSVAMP JSON folders,
lna's responses files (with a tokenizer: token ids checked against it), neuron-set JSON,
released counts (.npz, .pt), a count store's zarr.json, and JSONL logs read back on resume.
Examples are few and small (the default test command runs these within seconds), and the
seed is fixed (derandomize) so a failure reproduces.
"""
import io
import json
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lna.core import jsonl
from lna.core.config import Template
from lna.core.errors import LnaError
from lna.identification import neurons
from lna.inputs import data, responses
from lna.storage import import_counts
from lna.storage.store import open_store

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True, allow_infinity=True) \
    | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(string.ascii_lowercase, max_size=6), inner, max_size=4),
                           max_leaves=12)
id_lists = st.lists(st.integers(-2, 300) | st.floats(0, 10) | st.booleans(), max_size=6)


def either(good):
    """The plausible value or anything."""
    return st.one_of(good, json_values)


dataset_records = st.fixed_dictionaries(
    {"lang": either(st.sampled_from(["en", "zh", "English", "xx"]))},
    optional={
        "prompt": either(st.text(max_size=10)), "query": either(st.text(max_size=10)),
        "instruction": either(st.text(max_size=10)), "question": either(st.text(max_size=10)),
        "answers": either(st.lists(st.text(max_size=6) | st.fixed_dictionaries({"generated": st.text(max_size=6)}),
                                   max_size=3)),
        "responses": either(st.lists(st.text(max_size=6), max_size=3)), "response": either(st.text(max_size=6)),
        "id": json_values, "answer": json_values, "key": either(st.text(max_size=6)),
        "prompt_ids": either(id_lists), "response_ids": either(st.lists(id_lists, max_size=3)),
        "tokenizer": json_values, "template": json_values,
    })


def state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def read_or_one_line(read, folder: Path, *keep):
    """`read()`'s result, or None where it raised LnaError (one line); nothing written in
    `folder` but the files named in `keep` (a reader that repairs its own file)."""
    before = state(folder)
    try:
        return read()
    except LnaError as err:
        assert "\n" not in str(err).strip(), str(err)
        return None
    finally:
        after = state(folder)
        assert {k: v for k, v in after.items() if k not in keep} == {k: v for k, v in before.items() if k not in keep}


@pytest.fixture
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# -- dataset JSONL ----------------------------------------------------------------------------------
@FUZZ
@given(raw=st.binary(max_size=200))
def test_dataset_any_bytes(folder, raw):
    path = folder / "d.jsonl"
    path.write_bytes(raw)
    read_or_one_line(lambda: data.load(str(path)), folder)


@FUZZ
@given(lines=st.lists(json_values | dataset_records, min_size=1, max_size=4))
def test_dataset_any_json(folder, lines):
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    got = read_or_one_line(lambda: data.load(str(path)), folder)
    if got is not None:
        for q in got[1]:  # what is read is what the schema says: strings, integer ids
            assert isinstance(q.prompt, (str, type(None))) and isinstance(q.query, str)
            assert all(isinstance(r, str) for r in q.responses)
            for ids in [q.prompt_ids or []] + list(q.response_ids or []):
                assert all(type(t) is int and t >= 0 for t in ids)
            assert q.response_ids is None or len(q.response_ids) == len(q.responses)


@FUZZ
@given(raw=st.binary(max_size=120), kind=st.sampled_from(["mgsm_en.tsv", "test_English.json"]))
def test_dataset_folders_any_bytes(folder, raw, kind):
    (folder / kind).write_bytes(raw)
    try:
        read_or_one_line(lambda: data.load(str(folder)), folder)
    finally:
        (folder / kind).unlink()


# -- lna's responses files, against a tokenizer ------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from lna.models.tiny import byte_tokenizer

    return byte_tokenizer()


QUESTIONS = [data.Question(f"d/en/{i}", "en", f"What is {i}+1?") for i in range(3)]
TEMPLATE = Template("plain", "{query}")


def _real_record(tokenizer, q, text):
    prompt = q.render(TEMPLATE)
    ids = responses.encode(tokenizer, prompt)
    return {"key": q.key, "lang": "en", "query": q.query, "answer": "", "prompt": prompt, "responses": [text],
            "prompt_ids": ids, "response_ids": [responses.encode_response(tokenizer, prompt, ids, text)],
            "tokenizer": responses.tokenizer_id(tokenizer), "template": "plain",
            "sampling": {"n": 1, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 8, "seed": 0}}


@FUZZ
@given(raw=st.binary(max_size=200))
def test_responses_file_any_bytes(folder, tokenizer, raw):
    path = folder / "r.jsonl"
    path.write_bytes(raw)
    read_or_one_line(lambda: responses.plan(QUESTIONS, tokenizer, TEMPLATE, path, n=1, max_new_tokens=8),
                     folder, "r.jsonl")  # a torn last line is cut off (with a note)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(
    ["key", "lang", "prompt", "responses", "prompt_ids", "response_ids", "tokenizer", "template", "sampling",
     "query", "answer"]), json_values | id_lists | st.lists(id_lists, max_size=2)), max_size=3),
       text=st.text(max_size=8))
def test_responses_records_almost_right(folder, tokenizer, edits, text):
    recs = [_real_record(tokenizer, q, text) for q in QUESTIONS]
    for i, field, value in edits:
        recs[i][field] = value
    path = folder / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    plan = read_or_one_line(lambda: responses.plan(QUESTIONS, tokenizer, TEMPLATE, path, n=1, max_new_tokens=8),
                            folder, "r.jsonl")
    if plan is not None:
        for q in plan.questions:  # ids taken from the file are the tokenizer's tokens of the text
            if q.response_ids is not None:
                for r, ids in zip(q.responses, q.response_ids):
                    assert all(0 <= t < len(tokenizer) for t in ids)
                    assert (tokenizer.decode(ids, skip_special_tokens=True) == r
                            or responses.encode_response(tokenizer, q.prompt, q.prompt_ids, r) == ids)


# -- neuron sets --------------------------------------------------------------------------------------
def _neuron_json():
    return {"method": "ternary", "top_rate": 0.01, "lambda": 0.1, "tau": 0.5, "languages": ["en", "zh"],
            "layers": 2, "neurons": 8, "sets": {"en": [[0, 1], [2]], "zh": [[3], []]}, "general": [[], [7]],
            "source": {"model": "m"}}


@FUZZ
@given(raw=st.binary(max_size=200))
def test_neuron_file_any_bytes(folder, raw):
    path = folder / "n.json"
    path.write_bytes(raw)
    read_or_one_line(lambda: neurons.load(path), folder)


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(sorted(_neuron_json())), json_values | st.lists(id_lists, max_size=3)),
                      max_size=3), whole=st.none() | json_values)
def test_neuron_file_any_json(folder, edits, whole):
    obj = _neuron_json() if whole is None else whole
    if isinstance(obj, dict):
        for key, value in edits:
            obj[key] = value
    path = folder / "n.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    ns = read_or_one_line(lambda: neurons.load(path), folder)
    if ns is not None:
        for per_layer in [*ns.sets.values(), ns.general]:
            assert len(per_layer) == ns.layers
            assert all(a.dtype == np.int64 and (a.size == 0 or (a.min() >= 0 and a.max() < ns.neurons))
                       for a in per_layer)


# -- released counts ------------------------------------------------------------------------------------
@FUZZ
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".npz", ".pt"]))
def test_released_counts_any_bytes(folder, raw, suffix):
    path = folder / f"activation.en.x{suffix}"
    path.write_bytes(raw)
    try:
        read_or_one_line(lambda: import_counts.import_counts([path]), folder)
    finally:
        path.unlink()


@FUZZ
@given(arrays=st.dictionaries(st.sampled_from(["langs", "full_counts", "prefix_counts", "full_tokens",
                                               "prefix_tokens"]),
                              st.sampled_from([np.zeros((2, 3), np.int64), np.ones(2, np.int64), np.array(["en", "zh"]),
                                               -np.ones((2, 2, 3), np.int64), np.ones((2, 2, 3), np.float32),
                                               np.zeros(0), np.array([[1, 2]])]), max_size=5))
def test_released_npz_any_arrays(folder, arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = folder / "counts.npz"
    path.write_bytes(buf.getvalue())
    try:
        read_or_one_line(lambda: import_counts.import_counts([path]), folder)
    finally:
        path.unlink()


# -- a count store's group metadata ------------------------------------------------------------------------
@FUZZ
@given(attrs=json_values, raw=st.none() | st.binary(max_size=100))
def test_store_metadata_any_json(folder, attrs, raw):
    store = folder / "s.zarr"
    (store / "counts").mkdir(parents=True, exist_ok=True)
    meta = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    (store / "zarr.json").write_bytes(raw if raw is not None else json.dumps(meta).encode())
    read_or_one_line(lambda: open_store(store), folder)


# -- JSONL read back on resume (scores, pairs, steer outputs) ----------------------------------------------------
@FUZZ
@given(raw=st.binary(max_size=200))
def test_jsonl_any_bytes(folder, raw):
    path = folder / "log.jsonl"
    path.write_bytes(raw)
    got = read_or_one_line(lambda: jsonl.read(path, "scores", "delete it"), folder, "log.jsonl")
    assert got is None or all(isinstance(r, dict) for r in got)

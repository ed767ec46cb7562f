"""Shards (lna-profile --shard K/N): the partition is by prompt whatever the data's order,
and `lna merge` of the N shard stores equals one process's store exactly - counts, tokens,
sample ids, meta - for 2, 3 and 7 shards, empty shards included; merge refuses a missing,
repeated, unfinished or foreign shard, and --partial records what it holds."""
import json
import random

import numpy as np
import pytest

from conftest import profile_by_row, write_jsonl
from lna.core import config

from lna.inputs import data, demo, responses

from lna.profiling import shards
from lna.cli import run
from lna.cli.merge import merge
from lna.storage.manifest import sample_ids
from lna.storage.store import open_store

LANGS = ("en", "zh", "th")


def records():
    """Two demo questions per language (6 distinct prompts: 7 shards leave one empty at
    least), with identical samples: a response given twice for one question, and a
    question repeated under another id (same prompt, same response)."""
    recs = [r for r in demo.records() if r["lang"] in LANGS and r["id"] < 2]
    recs[0] = {**recs[0], "responses": recs[0]["responses"] * 2}
    recs.append({**recs[1], "id": 100})
    return recs


def profile_cli(model, dataset, out, *args):
    assert profile_by_row(model, dataset, out, *args) == 0
    return out


def tokenizer_of(model):
    from lna.models import loading

    return loading.load_tokenizer(loading.resolve(model))


def parse(recs, name):
    return data._parse_jsonl([json.dumps(r, ensure_ascii=False) for r in recs], name)


def lna_merge(*args):
    return run(merge, "lna-merge", [str(a) for a in args])


@pytest.fixture(scope="module")
def whole(tiny_models, tmp_path_factory):
    """One process over all of the data (in its order), and the same records shuffled,
    saved under the same dataset name for the shards."""
    root = tmp_path_factory.mktemp("shards")
    recs = records()
    ordered = write_jsonl(root / "ordered" / "d.jsonl", recs)
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    assert shuffled != recs
    write_jsonl(root / "shuffled" / "d.jsonl", shuffled)
    model = tiny_models["llama"]
    return {"root": root, "model": model, "store": profile_cli(model, ordered, root / "whole.zarr"),
            "shuffled": root / "shuffled" / "d.jsonl"}


def assert_same_store(a, b):
    assert a.languages == b.languages and a.complete and b.complete
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.samples.keys() == b.samples.keys()
    for lang in a.samples:
        assert sorted(a.samples[lang].ids.tolist()) == sorted(b.samples[lang].ids.tolist())
    assert a.meta == b.meta


@pytest.mark.parametrize("n", [2, 3, 7])
def test_merged_shards_equal_one_process(whole, tmp_path, n):
    parts = [profile_cli(whole["model"], whole["shuffled"], tmp_path / f"s{k}.zarr", "--shard", f"{k}/{n}")
             for k in range(1, n + 1)]
    stores = [open_store(p) for p in parts]
    for k, s in enumerate(stores, 1):
        assert s.complete and s.meta["shard"]["shards"] == [k] and s.meta["shard"]["count"] == n
        assert s.languages == list(LANGS)  # every shard holds every language of the run, maybe empty
    assert len({s.meta["shard"]["run"] for s in stores}) == 1
    sizes = [int(s.tokens.sum()) for s in stores]
    if n == 7:
        assert 0 in sizes  # 6 distinct prompts over 7 shards: an empty shard, still a valid store
    assert sum(sizes) == int(open_store(whole["store"]).tokens.sum())
    assert lna_merge(*reversed(parts), "-o", tmp_path / "m.zarr") == 0
    merged, ref = open_store(tmp_path / "m.zarr"), open_store(whole["store"])
    assert "shard" not in merged.meta
    assert_same_store(merged, ref)
    # identical samples (the doubled response, the repeated question) kept distinct
    assert len(set(ref.samples["en"].ids.tolist())) == len(ref.samples["en"].ids) == 4


def test_partition_is_by_prompt_whatever_the_order(tiny_models):
    """The shard of a question is a function of its prompt's tokens: shuffling or renaming
    the data moves nothing; questions sharing a prompt stay together; the N shards cover
    every question once; the run's identity ignores order but not content."""
    tokenizer = tokenizer_of(tiny_models["llama"])
    recs = [r for r in demo.records() if r["id"] < 6]
    shared = {**recs[0], "id": 999, "responses": [" other"]}  # same prompt as recs[0], another response
    recs.append(shared)
    template = config.template_for("m", "mathoctopus", tokenizer)[1]
    questions = parse(recs, "d")
    sampling = {"n": 1}
    for n in (1, 2, 5):
        picked = [shards.split(questions, shards.Shard(k, n), tokenizer, template, sampling) for k in range(1, n + 1)]
        keys = [sorted(q.key for q in qs) for qs, _ in picked]
        assert sorted(k for ks in keys for k in ks) == sorted(q.key for q in questions)
        assert len({rec["run"] for _, rec in picked}) == 1
        by_key = {key: k for k, ks in enumerate(keys) for key in ks}
        assert by_key["d/en/0"] == by_key["d/en/999"]
        # the same questions shuffled and renamed: the same shards, question by question
        perm = random.Random(n).sample(range(len(recs)), len(recs))
        renamed = parse([{**recs[i], "id": f"x{i}"} for i in perm], "other")
        again = [shards.split(renamed, shards.Shard(k, n), tokenizer, template, sampling) for k in range(1, n + 1)]
        assert [sorted(int(q.key.rsplit("x", 1)[1]) for q in qs) for qs, _ in again] == \
            [sorted(_index(recs, q) for q in qs) for qs, _ in picked]
        assert {rec["run"] for _, rec in again} == {picked[0][1]["run"]}
    # independently: the rule on the prompt's token ids (blake2b, 8 bytes little-endian)
    import hashlib

    for q in questions:
        ids = responses.encode(tokenizer, q.render(template))
        h = int.from_bytes(hashlib.blake2b(np.asarray(ids, "<i8").tobytes(), digest_size=8).digest(), "little")
        assert shards.of_prompt(ids, 7) == 1 + h % 7
    # another response, question or language selection is another run
    changed = parse([*recs[:-1], {**shared, "responses": [" else"]}], "d")
    assert shards.run_identity(changed, template, sampling) != shards.run_identity(questions, template, sampling)
    assert shards.run_identity(questions[1:], template, sampling) != shards.run_identity(questions, template, sampling)


def _index(recs, q):
    return next(i for i, r in enumerate(recs) if f"/{r['lang']}/{r['id']}" in q.key)


def test_empty_shard_is_a_valid_mergeable_store(whole, tmp_path):
    n = 7
    model, ds = whole["model"], whole["shuffled"]
    empty = next(k for k in range(1, n + 1) if not _shard_questions(model, ds, k, n))
    out = profile_cli(model, ds, tmp_path / "e.zarr", "--shard", f"{empty}/{n}")
    s = open_store(out)
    assert s.complete and s.languages == list(LANGS) and not s.tokens.any() and not s.counts.any()
    assert not any(len(c.ids) for c in s.samples.values())
    # rerun: resumes (nothing to do) and stays the same
    profile_cli(model, ds, out, "--shard", f"{empty}/{n}")
    np.testing.assert_array_equal(open_store(out).counts, s.counts)


def _shard_questions(model, ds, k, n):
    tokenizer = tokenizer_of(model)
    _, questions = data.load(str(ds), "all")
    template = config.template_for(model, None, tokenizer)[1]
    return shards.split(questions, shards.Shard(k, n), tokenizer, template, {})[0]


def test_partial_merge_is_recorded_and_completed_later(whole, tmp_path):
    model, ds = whole["model"], whole["shuffled"]
    parts = [profile_cli(model, ds, tmp_path / f"s{k}.zarr", "--shard", f"{k}/3") for k in (1, 2, 3)]
    assert lna_merge(parts[0], parts[2], "-o", tmp_path / "p.zarr") == 1  # shard 2 missing
    assert not (tmp_path / "p.zarr").exists()
    assert lna_merge(parts[0], parts[2], "-o", tmp_path / "p.zarr", "--partial") == 0
    p = open_store(tmp_path / "p.zarr")
    assert p.meta["shard"]["shards"] == [1, 3] and p.meta["shard"]["count"] == 3
    one, three = open_store(parts[0]), open_store(parts[2])
    np.testing.assert_array_equal(p.counts, one.counts + three.counts)
    # the missing shard merged in later completes the run: equal to one process
    assert lna_merge(tmp_path / "p.zarr", parts[1], "-o", tmp_path / "m.zarr") == 0
    assert_same_store(open_store(tmp_path / "m.zarr"), open_store(whole["store"]))
    # and no shard can be added twice, even through a partial store
    assert lna_merge(tmp_path / "p.zarr", parts[0], "-o", tmp_path / "x.zarr", "--partial") == 1


def test_shard_ids_equal_the_whole_runs(whole, tmp_path):
    """Content ids numbered inside a shard are those numbered over the whole run's list
    (identical samples fall in one shard, in the same relative order)."""
    ref = open_store(whole["store"])
    _, questions = data.load(str(whole["shuffled"]), "all")
    tokenizer = tokenizer_of(whole["model"])
    template = config.template_for(whole["model"], None, tokenizer)[1]
    everything = responses.samples(responses.tokenized(questions, tokenizer, template))
    whole_ids = dict(zip(map(id, everything), sample_ids(everything).tolist()))
    for k in (1, 2, 3):
        mine, _ = shards.split(questions, shards.Shard(k, 3), tokenizer, template, {})
        keys = {q.key for q in mine}
        part = [s for s in everything if s.group in keys]
        assert sample_ids(part).tolist() == [whole_ids[id(s)] for s in part]
    assert sorted(whole_ids.values()) == sorted(np.concatenate([c.ids for c in ref.samples.values()]).tolist())

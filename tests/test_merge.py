"""Merging real profiles of a tiny model: overlap is refused whatever the dataset's name,
disjoint shards sum exactly to one run over their union, stores of lna 0.1 resume."""
import json
import re
import shutil

import numpy as np
import pytest

from conftest import interrupt_counting, one_line, profile_by_row, write_jsonl
import legacy
from lna.inputs import data, demo, responses
from lna.cli import run
from lna.cli.merge import merge
from lna.storage.manifest import sample_ids
from lna.storage.store import open_store

LANGS = ("en", "zh", "th")


@pytest.fixture
def lna_merge(capsys):
    def call(*args):
        rc = run(merge, "lna-merge", [str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err
    return call


@pytest.fixture(scope="module")
def demo_store(tiny_models, tmp_path_factory):
    """The first 12 questions of the demo set in en, zh and th, profiled once."""
    out = tmp_path_factory.mktemp("demo") / "full.zarr"
    assert profile_by_row(tiny_models["llama"], "demo", out, "--langs", ",".join(LANGS), "--limit", "12") == 0
    return out


def test_partial_overlap_is_refused(tiny_models, demo_store, tmp_path, lna_merge):
    part = tmp_path / "part.zarr"
    assert profile_by_row(tiny_models["llama"], "demo", part, "--langs", "en", "--limit", "5") == 0
    err = one_line(lna_merge(demo_store, part, "-o", tmp_path / "m.zarr"), "error:")
    assert "cannot merge en: 5 of its 5 samples in" in err
    assert re.search(r"\(e.g. demo/en/(\d+)/0 is demo/en/\1/0 there: same tokens\)", err), err
    assert not (tmp_path / "m.zarr").exists()


def test_same_samples_under_another_dataset_name_are_refused(tiny_models, demo_store, tmp_path, lna_merge):
    # the responses lna kept beside the store are a dataset of their own, with another name
    other = tmp_path / "renamed.jsonl"
    shutil.copy(responses.path_beside(demo_store), other)
    records = [json.loads(x) for x in other.read_text(encoding="utf-8").splitlines()]
    write_jsonl(other, [{k: v for k, v in r.items() if k != "key"} | {"id": f"x{i}"} for i, r in enumerate(records)])
    renamed = tmp_path / "renamed.zarr"
    assert profile_by_row(tiny_models["llama"], other, renamed, "--langs", "en") == 0
    assert open_store(renamed).meta["dataset"] == "renamed"
    n_en = len(open_store(demo_store).samples["en"].ids)
    err = one_line(lna_merge(demo_store, renamed, "-o", tmp_path / "m.zarr"), "error:")
    assert f"cannot merge en: {n_en} of its {n_en} samples in" in err and "renamed/en/x" in err


def test_disjoint_shards_sum_to_one_run_over_their_union(tiny_models, tmp_path, lna_merge):
    records = [r for r in demo.records() if r["lang"] in LANGS and r["id"] < 12]
    # the same response twice for one question: two samples, counted twice in every split
    records[0] = {**records[0], "responses": records[0]["responses"] * 2}
    whole = write_jsonl(tmp_path / "whole.jsonl", records)
    a = write_jsonl(tmp_path / "a.jsonl", [r for r in records if r["id"] % 3 == 0])
    b = write_jsonl(tmp_path / "b.jsonl", [r for r in records if r["id"] % 3 != 0])
    for name, ds in (("whole", whole), ("a", a), ("b", b)):
        assert profile_by_row(tiny_models["mistral"], ds, tmp_path / f"{name}.zarr") == 0
    rc, out, err = lna_merge(tmp_path / "a.zarr", tmp_path / "b.zarr", "-o", tmp_path / "ab.zarr")
    assert rc == 0, err
    ref, m = open_store(tmp_path / "whole.zarr"), open_store(tmp_path / "ab.zarr")
    assert m.languages == ref.languages and m.complete
    np.testing.assert_array_equal(m.counts, ref.counts)
    np.testing.assert_array_equal(m.tokens, ref.tokens)
    for lang in ref.languages:
        assert sorted(m.samples[lang].ids.tolist()) == sorted(ref.samples[lang].ids.tolist())
    assert len(ref.samples["en"].ids) == len(set(ref.samples["en"].ids.tolist())) == 13
    assert m.meta["dataset"] == "a+b"
    # the other order gives the same sums
    assert lna_merge(tmp_path / "b.zarr", tmp_path / "a.zarr", "-o", tmp_path / "ba.zarr")[0] == 0
    np.testing.assert_array_equal(open_store(tmp_path / "ba.zarr").counts, ref.counts)
    # and a shard merged into the sum is refused: all of its samples are already there
    err = one_line(lna_merge(tmp_path / "ab.zarr", tmp_path / "a.zarr", "-o", tmp_path / "x.zarr"), "error:")
    assert "samples in" in err and "already counted" in err


def test_existing_output_needs_force(tiny_models, demo_store, tmp_path, lna_merge):
    other = tmp_path / "ja.zarr"
    assert profile_by_row(tiny_models["llama"], "demo", other, "--langs", "ja", "--limit", "3") == 0
    target = tmp_path / "m.zarr"
    shutil.copytree(other, target)
    err = one_line(lna_merge(demo_store, other, "-o", target), "error:")
    assert "already exists" in err and "--force" in err
    assert open_store(target).languages == ["ja"]
    rc, out, err = lna_merge(demo_store, other, "-o", target, "--force")
    assert rc == 0, err
    assert open_store(target).languages == [*LANGS, "ja"] and "merged 2 stores" in out


def test_store_of_lna_0_1_resumes_without_double_counting(tiny_models, tmp_path, monkeypatch, capsys):
    """A run of lna 0.1 killed half-way (samples recorded by position) is finished by this
    lna, counting each sample once: the result equals one uninterrupted run."""
    model = tiny_models["mistral"]
    ds = write_jsonl(tmp_path / "d.jsonl", [r for r in demo.records() if r["lang"] in LANGS and r["id"] < 8])
    assert profile_by_row(model, ds, tmp_path / "whole.zarr") == 0
    resume = interrupt_counting(monkeypatch, after=1)
    cut = tmp_path / "cut.zarr"
    assert profile_by_row(model, ds, cut, "--checkpoint-every", "0") == 130
    resume()
    partial = open_store(cut)
    assert 0 < partial.tokens.sum() < open_store(tmp_path / "whole.zarr").tokens.sum()
    # Rewrite it as lna 0.1 did: per language, done bits over the run's sample list.
    samples = responses.samples(data.load(str(responses.path_beside(cut)))[1])
    parts = {}
    for lang in partial.languages:
        group = [s for s in samples if s.lang == lang]
        done = np.isin(sample_ids(group), partial.samples[lang].ids if lang in partial.samples else [])
        parts[lang] = [legacy.part(responses.digest(group), done)]
    shutil.rmtree(cut)
    legacy.write_store(cut, partial.counts, partial.tokens, partial.languages,
                       {**partial.meta, "model_fingerprint": legacy.fingerprint(model),
                        "model_fingerprint_legacy": None}, parts, complete=False)
    capsys.readouterr()
    assert profile_by_row(model, ds, cut) == 0
    assert "older lna" in capsys.readouterr().err
    a, b = open_store(tmp_path / "whole.zarr"), open_store(cut)
    assert b.complete and np.array_equal(a.counts, b.counts) and np.array_equal(a.tokens, b.tokens)
    for lang in a.languages:
        assert sorted(b.samples[lang].ids.tolist()) == sorted(a.samples[lang].ids.tolist())

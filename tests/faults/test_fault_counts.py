"""Fault injection, what the counts mean: settings checked on resume and merge, non-finite
activations, notes where a result is weak, and smaller edges.

- resuming a float32 store with --dtype bfloat16 -> one line, the store untouched
- lna merge of stores made with different templates, or another kernel version -> one line, no output
- a model with a NaN weight (layer 1's gate): lna-profile stops in one line naming layer 1,
  whether counting given responses or while sampling; no store is written
- notes: lna-identify / lna-report on a single shard and on a --partial merge; lna-ablate with
  a neuron file without a source model and with empty sets; lna-steer with an empty set
- lna-steer --layers 3-1 says the range runs backwards; "merged 1 store"; lna-compare says
  n/a for an overlap where one side has none (not a blank); lna-align leaves no -o folder
  after an early error and refuses --temperature -1 and --top-p 0; the help of lna-profile and
  lna merge says what the code does
"""
import json
import shutil
from pathlib import Path

import pytest

from faults.faultkit import Unchanged, one_line, only, write_jsonl
from lna.storage.counts import check_compatible
from lna.storage.store import open_store


def _copy_made(made, folder: Path) -> Path:
    shutil.copytree(made["store"], folder / "s.zarr")
    shutil.copy(made["responses"], folder / "s.responses.jsonl")
    return folder / "s.zarr"


def test_resume_with_another_dtype_is_refused(made, model, tmp_path, lna):
    store = _copy_made(made, tmp_path)
    assert open_store(store).meta["dtype"] == "float32"
    with Unchanged(tmp_path):
        one_line(lna("profile", "-q", "--model", model, "--dataset", made["data"], "--out", store,
                     "--dtype", "bfloat16"), str(store), "computed in float32", "--dtype float32")


def test_merge_of_different_templates_is_refused(model, tmp_path, lna):
    for name, template in (("a", "plain"), ("b", "mathoctopus")):
        assert lna("profile", "-q", "--model", model, "--dataset", "demo", "--langs", "en", "--limit", "2",
                   "--template", template, "--out", tmp_path / f"{name}.zarr")[0] == 0
    with Unchanged(tmp_path):
        one_line(lna("merge", tmp_path / "a.zarr", tmp_path / "b.zarr", "-o", tmp_path / "m.zarr"),
                 "template differs", "'plain'", "'mathoctopus'")
    assert not (tmp_path / "m.zarr").exists()


def test_merge_across_kernel_versions_is_refused(made):
    from lna.core.errors import LnaError

    a, b = open_store(made["store"]), open_store(made["store"])
    assert a.meta["kernel"].startswith("lna.kernels/")
    b.meta["kernel"] = "lna.kernels/0"
    with pytest.raises(LnaError, match="kernel differs"):
        check_compatible(a, b, names=("a", "b"))


# -- non-finite activations ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_model(model, tmp_path_factory):
    from safetensors.torch import load_file, save_file

    path = tmp_path_factory.mktemp("nan") / "m"
    shutil.copytree(model, path)
    weights = load_file(path / "model.safetensors")
    weights["model.layers.1.mlp.gate_proj.weight"][5, 3] = float("nan")
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("way", ["given responses", "while sampling"])
def test_nan_weight_stops_the_profile_naming_the_layer(way, nan_model, made, tmp_path, lna):
    data = made["data"] if way == "given responses" else write_jsonl(
        tmp_path / "q.jsonl", [{"lang": "en", "query": "What is 2+2?"}])
    out = tmp_path / "out"
    one_line(lna("profile", "-q", "--model", nan_model, "--dataset", data, "--out", out / "s.zarr", "-n", "1",
                 "--max-new-tokens", "4"), "NaN or Inf gate activations in layer 1", "the first")
    assert not (out / "s.zarr").exists()
    if way == "while sampling":
        assert not out.exists()  # nothing sampled is kept: the batch was refused before its append
    else:
        only(out, "s.responses.jsonl")  # the data's responses, tokenized before counting (valid, reused)


# -- notes where a result is weak ------------------------------------------------------------------------------
def test_identify_and_report_note_a_single_shard_or_partial_merge(made, model, tmp_path, lna):
    shard = tmp_path / "s1.zarr"
    assert lna("profile", "-q", "--model", model, "--dataset", "demo", "--langs", "en,zh", "--limit", "6",
               "--shard", "1/2", "--out", shard)[0] == 0
    assert open_store(shard).tokens.all()  # both languages have questions in this shard
    rc, out, err = lna("merge", shard, "-o", tmp_path / "p.zarr", "--partial")
    assert rc == 0 and "merged 1 store into" in out, (out, err)
    for made_store in (shard, tmp_path / "p.zarr"):
        for command in ("identify", "report"):
            store = tmp_path / f"{command}-{made_store.name}"  # a note is said once per process and path
            shutil.copytree(made_store, store)
            rc, _, err = lna(command, store, "-o", tmp_path / f"{store.stem}.out", "--top-rate", "0.05")
            assert rc == 0 and err.count("\n") == 1, err
            assert f"{store} holds shard 1/2 of its run only" in err and "lna merge" in err, err


def test_ablate_notes_a_file_without_source_and_empty_sets(made, model, tmp_path, lna):
    ns = json.loads(made["neurons"].read_text(encoding="utf-8"))
    ns.pop("source")
    ns["sets"]["zh"] = [[] for _ in range(ns["layers"])]
    ns.pop("specific", None)
    (tmp_path / "n.json").write_text(json.dumps(ns), encoding="utf-8")
    rc, _, err = lna("ablate", "-q", "--model", model, "--neurons", tmp_path / "n.json", "--responses",
                     made["responses"], "-o", tmp_path / "ab")
    assert rc == 0, err
    assert "names no source model" in err and "the specific set of zh" in err and "changed nothing" in err, err


def test_steer_notes_an_empty_target_set(made, model, tmp_path, lna):
    pytest.importorskip("py3langid")
    ns = json.loads(made["neurons"].read_text(encoding="utf-8"))
    ns["sets"]["zh"] = [[] for _ in range(ns["layers"])]
    ns.pop("specific", None)
    (tmp_path / "n.json").write_text(json.dumps(ns), encoding="utf-8")
    rc, _, err = lna("steer", "-q", "--model", model, "--neurons", tmp_path / "n.json", "--store", made["store"],
                     "--from", "en", "--to", "zh", "--dataset", made["data"], "--strengths", "1",
                     "--max-new-tokens", "3", "-o", tmp_path / "st")
    assert rc == 0, err
    assert "set of zh is empty, so steering to it changed nothing" in err, err


# -- smaller edges -------------------------------------------------------------------------------------------------
def test_steer_layers_backwards(made, model, tmp_path, lna):
    pytest.importorskip("py3langid")
    with Unchanged(tmp_path):
        one_line(lna("steer", "-q", "--model", model, "--neurons", made["neurons"], "--store", made["store"],
                     "--from", "en", "--to", "zh", "--dataset", made["data"], "--layers", "2-1",
                     "-o", tmp_path / "st"), "'2-1' runs backwards", "(1-2)")


def test_compare_says_n_a_not_a_blank(made, tmp_path, lna):
    ns = json.loads(made["neurons"].read_text(encoding="utf-8"))
    ns["general"] = [[] for _ in range(ns["layers"])]
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps(ns), encoding="utf-8")
    rc, out, err = lna("compare", tmp_path / "a.json", tmp_path / "b.json", "-o", tmp_path / "cmp")
    assert rc == 0, err
    assert "general n/a (none on one side)" in out and "general ," not in out, out


@pytest.mark.parametrize("args, words", [
    (["--langs", "en", "--pivot", "en"], ["names only the pivot"]),
    (["--langs", "zh", "--temperature", "-1"], ["--temperature", "x>=0"]),
    (["--langs", "zh", "--top-p", "0"], ["--top-p", "0<x<=1"]),
])
def test_align_early_errors_leave_no_folder(args, words, model, tmp_path, lna):
    with Unchanged(tmp_path):
        one_line(lna("align", "--model", model, *args, "-o", tmp_path / "out" / "al"), *words)
    assert not (tmp_path / "out").exists()


def test_help_says_what_the_code_does(lna):
    rc, out, _ = lna("profile", "--help")
    assert rc == 0 and "Force-decode responses through" not in out and "while they are sampled" in out
    rc, out, _ = lna("merge", "--help")
    assert rc == 0 and "counting modes" not in out and "template" in out


def test_align_on_a_model_without_tokenizer(model, made, tmp_path, lna):
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(model, broken)
    for f in broken.glob("tokenizer*"):
        f.unlink()
    with Unchanged(tmp_path):
        one_line(lna("align", "--model", broken, "--langs", "zh", "--dataset", made["data"], "-o",
                     tmp_path / "al"), str(broken), "no tokenizer")

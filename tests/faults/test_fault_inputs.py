"""Fault injection, inputs: model folders without tokenizer or weights or with truncated weights,
devices lna cannot use, out-of-range options, a language whose responses are all empty, a
torn responses file.
"""
import builtins
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import legacy
from lna import cli
from lna.storage import store as store_module
from lna.storage.store import open_store

from faults.faultkit import REPO, DATA, Unchanged, one_line, only, write_jsonl


# == model folders ======================================================================================
def _broken_model(model, tmp_path, kind):
    import shutil

    broken = tmp_path / f"no-{kind}"
    shutil.copytree(model, broken)
    if kind == "tokenizer":
        for f in broken.glob("tokenizer*"):
            f.unlink()
    elif kind == "weights":
        (broken / "model.safetensors").unlink()
    else:  # a download cut short
        size = (broken / "model.safetensors").stat().st_size
        os.truncate(broken / "model.safetensors", size // 2)
    return broken


@pytest.mark.parametrize("kind,words", [
    ("tokenizer", ["no tokenizer", "tokenizer.json", "copy the model's remaining files"]),
    ("weights", ["has config.json but no weights", "*.safetensors"]),
    ("truncated", ["could not load the weights"]),
])
@pytest.mark.parametrize("command", ["profile", "ablate"])
def test_incomplete_model_folder(command, kind, words, made, model, tmp_path, lna):
    broken = _broken_model(model, tmp_path, kind)
    out = tmp_path / "out"
    if command == "profile":
        args = ["profile", "--model", broken, "--dataset", made["data"], "--out", out / "s.zarr"]
    else:
        args = ["ablate", "--model", broken, "--neurons", made["neurons"], "--responses", made["responses"],
                "-o", out / "ab", "--allow-other-model"]
    with Unchanged(made["root"]):
        one_line(lna(*args), str(broken), *words)
    assert not out.exists()


# == devices ============================================================================================
@pytest.mark.parametrize("device,words", [
    ("tpu", ["--device", "tpu", "cpu, cuda or cuda:N"]),
    ("cuda:x", ["--device", "cuda:x"]),
    ("cpu:0", ["--device", "cpu:0"]),
    ("cuda", ["--device cuda", "no CUDA device", "--device cpu"]),
    ("cuda:3", ["--device cuda:3", "no CUDA device"]),
])
@pytest.mark.parametrize("command", ["profile", "ablate"])
def test_device(command, device, words, made, model, tmp_path, lna):
    import torch

    if device.startswith("cuda:") and device[5:].isdigit() and torch.cuda.is_available():
        if torch.cuda.device_count() > int(device[5:]):
            pytest.skip(f"this machine has a {device}")
        words = [f"--device {device}", "cuda:0..cuda:"]
    elif device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present: --device cuda is valid here")
    if command == "profile":
        args = ["profile", "--model", model, "--dataset", made["data"], "--out", tmp_path / "s.zarr"]
    else:
        args = ["ablate", "--model", model, "--neurons", made["neurons"], "--responses", made["responses"],
                "-o", tmp_path / "ab"]
    with Unchanged(made["root"]), Unchanged(tmp_path):
        one_line(lna(*args, "--device", device), *words)


# == out-of-range options ===============================================================================
@pytest.mark.parametrize("command,option,value", [
    ("identify", "--lambda", "-1"), ("identify", "--lambda", "nan"), ("identify", "--lambda", "inf"),
    ("identify", "--top-rate", "-0.01"), ("identify", "--top-rate", "0"), ("identify", "--top-rate", "1.5"),
    ("identify", "--tau-quantile", "1"), ("identify", "--tau-quantile", "-0.5"),
    ("report", "--lambda", "-0.1"), ("report", "--top-rate", "-1"),
    ("compare", "--lambda", "-2"), ("compare", "--top-rate", "2"),
    ("profile", "--temperature", "-1"), ("profile", "--top-p", "0"), ("profile", "--top-p", "1.1"),
    ("profile", "--samples", "0"), ("profile", "--max-new-tokens", "0"), ("profile", "--limit", "-3"),
    ("profile", "--token-budget", "0"), ("profile", "--checkpoint-every", "-5"),
    ("ablate", "--limit", "0"), ("ablate", "--token-budget", "-1"), ("ablate", "--checkpoint-every", "-1"),
    ("steer", "--strengths", "-1"), ("steer", "--strengths", "nan"), ("steer", "--max-new-tokens", "0"),
    ("steer", "--limit", "0"),
])
def test_out_of_range_option(command, option, value, made, model, tmp_path, lna):
    base = {
        "identify": ["identify", made["store"], "-o", tmp_path / "n.json"],
        "report": ["report", made["store"], "-o", tmp_path / "r"],
        "compare": ["compare", made["store"], made["store"], "-o", tmp_path / "c"],
        "profile": ["profile", "--model", model, "--dataset", made["data"], "--out", tmp_path / "s.zarr"],
        "ablate": ["ablate", "--model", model, "--neurons", made["neurons"], "--responses", made["responses"],
                   "-o", tmp_path / "ab"],
        "steer": ["steer", "--model", model, "--neurons", made["neurons"], "--store", made["store"], "--from", "en",
                  "--to", "zh", "--dataset", made["data"], "-o", tmp_path / "st"],
    }[command]
    with Unchanged(made["root"]), Unchanged(tmp_path):
        one_line(lna(*base, option, value), option, value.lstrip("-") if value != "nan" else "nan")


# == data =================================================================================================
def test_language_whose_responses_are_all_empty(model, tmp_path, lna):
    data = write_jsonl(tmp_path / "d.jsonl", DATA + [{"lang": "th", "prompt": "x", "responses": ["", ""]},
                                                     {"lang": "th", "prompt": "y", "responses": [""]}])
    out = tmp_path / "out"
    with Unchanged(tmp_path):
        one_line(lna("profile", "--model", model, "--dataset", data, "--out", out / "s.zarr"),
                 "every response in th", "empty", "--langs")
    # where the responses are sampled, the check comes once they are: the model's answers
    # stay (they took time), the store is not written
    from lna.runners.hf import HFRunner

    ds = write_jsonl(tmp_path / "q.jsonl", [{"lang": "en", "query": "hi"}, {"lang": "fr", "query": "salut"}])
    def answers(prompts):
        return [[[5, 6]] if i == 0 else [[]] for i in range(len(prompts))]

    def counted(self, prompts, langs, languages, sums=False, **k):  # counting while sampling: the same answers
        tokens = np.array([2 if lang == langs[0] else 0 for lang in languages])
        tables = [np.zeros((self.layers, len(languages), self.neurons))] * (2 if sums else 0)
        return answers(prompts), np.zeros((self.layers, len(languages), self.neurons), np.int64), tokens, *tables

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HFRunner, "generate", lambda self, prompts, **k: answers(prompts))
        mp.setattr(HFRunner, "generate_counting", counted)
        for way in ([], ["--force-decode"]):
            one_line(lna("profile", "-q", "--model", model, "--dataset", ds, "--out", out / "g.zarr", "-n", "1",
                         *way), "every response in fr is empty", "g.responses.jsonl")
            only(out, "g.responses.jsonl")


# == a torn responses file ================================================================================
def test_torn_responses_file_is_reported_repaired_and_counted_once(made, model, tmp_path, lna):
    """A crash mid-append leaves a torn last line: the rerun says so, cuts it off, prepares
    that question again, and the counts equal those of a run that never tore."""
    lines = made["responses"].read_text(encoding="utf-8").splitlines(keepends=True)
    torn = tmp_path / "s.responses.jsonl"
    torn.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")
    rc, _, err = lna("profile", "-q", "--model", model, "--dataset", made["data"],
                     "--out", tmp_path / "s.zarr")
    assert rc == 0, err
    notes = err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: ") and str(torn) in notes[0] and "torn last line" in notes[0]
    assert torn.read_text(encoding="utf-8") == "".join(lines)
    a, b = open_store(made["store"]), open_store(tmp_path / "s.zarr")
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.tokens, b.tokens)


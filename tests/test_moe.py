"""The MoE runner (lna.runners.moe) against unmodified transformers models with hooks
(tests/naive_moe.py), on tiny random models of every supported MoE family: top-k > 1,
shared experts (Qwen2-MoE, DeepSeek) and dense layers (Qwen3-MoE's mlp_only_layers,
DeepSeek's first_k_dense_replace)."""
import numpy as np
import pytest
import torch

import naive
import naive_moe
from conftest import interrupt_after, random_samples
from lna.core.errors import LnaError
from lna.models.tiny import build_tiny
from lna.runners.moe import CountingExperts, ExpertMasks, MoERunner, _MoEState

LANGS = ["en", "zh", "ja"]
ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3"]


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    return {arch: str(build_tiny(root / arch, arch, hidden=64, layers=3, intermediate=96, heads=2, kv_heads=1,
                                 seed=seed)) for seed, arch in enumerate(ARCHS)}


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def runner(moe_models, arch):
    # small budgets: several batches, split groups and padding
    return MoERunner(moe_models[arch], token_budget=160, max_row_tokens=90)


def test_counts_equal_naive_hooks(runner, moe_models, arch):
    samples = random_samples(1, LANGS, questions=6, max_response=30)
    counts, tokens, experts = runner.count(samples, LANGS)
    dense, dense_amb, ref, ref_amb, routed = naive_moe.counts(moe_models[arch], samples, LANGS)
    assert np.array_equal(experts.routed, routed), "routed tokens differ from the router's own choice"
    naive.assert_counts_equal(experts.counts, ref, ref_amb)
    assert counts.shape == dense.shape
    if counts.size:
        naive.assert_counts_equal(counts, dense, dense_amb)
    assert tokens.tolist() == [sum(len(s.response) for s in samples if s.lang == lang) for lang in LANGS]
    lay = runner.layout
    # every counted token is routed to top_k experts in each MoE layer, to none elsewhere
    per_layer = experts.routed.sum(axis=1)
    assert (per_layer[list(lay.moe_layers)] == lay.top_k * tokens).all()
    assert (experts.routed.sum(axis=(1, 2))[[i for i in range(3) if i not in lay.moe_layers]] == 0).all()
    assert (experts.counts <= experts.routed[..., None]).all() and experts.counts.sum() > 0
    if arch in ("mixtral", "olmoe"):
        assert counts.shape[2] == 0
    else:  # shared experts or dense layers: counted like a dense MLP, padding never counted
        assert counts.sum() > 0
        for i, w in enumerate(lay.always_on):
            assert (counts[i, :, w:] == 0).all()


@pytest.mark.parametrize("implementation", ["eager", "batched_mm", "grouped_mm"])
def test_counting_experts_compute_transformers_paths(moe_models, implementation):
    """The counting module's output equals each of transformers' expert paths (per-expert
    loop, batched and grouped matmuls) on the same routing."""
    model = naive.load(moe_models["qwen3_moe"])
    model.config._experts_implementation = implementation
    experts = model.model.layers[0].mlp.experts
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 64, generator=gen)
    index = torch.stack([torch.randperm(8, generator=gen)[:3] for _ in range(37)])
    weights = torch.rand(37, 3, generator=gen)
    with torch.no_grad():
        want = experts(x, index, weights)
        got = CountingExperts(experts, 0, _MoEState())(x, index, weights)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_nll_equals_transformers(runner, moe_models, arch):
    samples = random_samples(5, LANGS, questions=3, max_response=20)
    got = runner.nll(samples, None, [-1] * len(samples))
    ref64 = naive_moe.nll(moe_models[arch], samples)
    ref32 = naive_moe.nll(moe_models[arch], samples, dtype=torch.float32)
    assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-6


def random_masks(runner, n, seed, whole=False):
    """ExpertMasks of n masks: 30% of the expert and always-on neurons, or whole experts."""
    rng = np.random.default_rng(seed)
    lay = runner.layout
    always = rng.random((n, runner.layers, lay.neurons)) < 0.3
    experts = rng.random((n, runner.layers, lay.experts, lay.expert_neurons)) < 0.3
    if whole:  # two whole experts per layer, nothing else
        always[:] = False
        experts[:] = False
        experts[:, :, [1, 5]] = True
    return ExpertMasks(always, experts)


@pytest.mark.parametrize("setting", ["zero", "whole experts", "set"])
def test_interventions_equal_hooked_transformers(runner, moe_models, arch, setting):
    samples = random_samples(7, LANGS, questions=3, max_response=20)
    masks = random_masks(runner, 2, seed=3, whole=setting == "whole experts")
    values = None
    if setting == "set":
        rng = np.random.default_rng(4)
        values = ExpertMasks(*(rng.normal(0, 2, m.shape).astype(np.float32) for m in masks))
    mask_ids = [i % 3 - 1 for i in range(len(samples))]  # -1, 0, 1, -1, ...
    got = runner.nll(samples, masks, mask_ids, values)
    ref64 = naive_moe.nll_intervened(moe_models[arch], samples, masks, mask_ids, values)
    ref32 = naive_moe.nll_intervened(moe_models[arch], samples, masks, mask_ids, values, dtype=torch.float32)
    assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-6
    plain = runner.nll(samples, None, [-1] * len(samples))
    hit = np.array(mask_ids) >= 0
    assert np.array_equal(got[~hit], plain[~hit]) and (got[hit] != plain[hit]).all()


def test_generate_with_interventions_equals_hooked_transformers(runner, moe_models, arch):
    masks = random_masks(runner, 1, seed=5)
    prompts = [[1, 40, 41, 42, 43], [1, 50, 51]]
    got = runner.generate(prompts, n=1, temperature=0, top_p=1, max_new_tokens=6, seed=0, masks=masks,
                          mask_ids=[0, 0])
    model = naive.load(moe_models[arch])
    model.config._experts_implementation = "eager"
    hooks = naive_moe.intervene(model, ExpertMasks(*(m[0] for m in masks)))
    try:
        want = [naive.greedy(moe_models[arch], [p], 6, model=model)[0] for p in prompts]
    finally:
        for h in hooks:
            h.remove()
    assert [g[0] for g in got] == want


def test_refusals_are_one_line(moe_models, tmp_path):
    runner = MoERunner(moe_models["olmoe"])
    samples = random_samples(2, LANGS, questions=1)
    for call in (lambda: runner.count(samples, LANGS, sums=True),
                 lambda: runner.nll(samples, np.ones((1, 3, 96), bool), [0] * len(samples)),
                 lambda: runner.nll(samples, ExpertMasks(None, np.ones((1, 3, 8, 5), bool)), [0] * len(samples)),
                 lambda: runner.generate_counting([[1, 5]], ["en"], LANGS, n=1, temperature=0, top_p=1,
                                                  max_new_tokens=2, seed=0)):
        with pytest.raises(LnaError) as err:
            call()
        assert "\n" not in str(err.value)
    from lna.models import moe

    with pytest.raises(LnaError, match="glu") as err:
        moe.identify({"model_type": "gpt_oss", "num_hidden_layers": 2, "num_local_experts": 4}, "m")
    with pytest.raises(LnaError, match="does not count"):
        moe.identify({"model_type": "jamba", "num_hidden_layers": 2, "num_experts": 4}, "m")


def test_dense_path_still_refuses_moe(moe_models):
    from lna.runners.hf import HFRunner

    with pytest.raises(LnaError, match="mixture-of-experts"):
        HFRunner(moe_models["mixtral"])


def test_profile_and_experts_end_to_end(moe_models, tmp_path, monkeypatch):
    """lna-profile on a MoE model writes a store with the expert tables of MoERunner.count on
    the same samples (force-decoded, even without --force-decode; no sums); a run killed
    after one chunk resumes to the same store; lna experts writes its results."""
    import json

    from lna.cli import run
    from lna.cli.experts import experts
    from lna.cli.profile import profile
    from lna.inputs import data, responses
    from lna.storage.store import open_store

    recs = [{"lang": "en", "query": "What is 2+3?", "responses": [" 2+3 = 5. The answer is 5.", " Five."]},
            {"lang": "zh", "query": "2加3等于多少？", "responses": [" 2加3等于5。答案是5。", " 五"]},
            {"lang": "en", "query": "Name a colour.", "responses": [" Red is a colour."]}]
    ds = tmp_path / "d.jsonl"
    ds.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n", encoding="utf-8")
    model = moe_models["deepseek_v3"]
    args = ["-q", "--model", model, "--dataset", str(ds), "--token-budget", "40", "--checkpoint-every", "0"]
    out = tmp_path / "s.zarr"
    assert run(profile, "lna-profile", [*args, "--out", str(out)]) == 0
    store = open_store(out, allow_partial=False)
    assert store.has_experts and not store.has_sums and store.meta["always_on"] == [96, 96, 96]
    _, qs = data.load(str(tmp_path / "s.responses.jsonl"))
    counts, tokens, tables = MoERunner(model).count(responses.samples(qs), store.languages)
    assert np.array_equal(store.counts, counts) and np.array_equal(store.tokens, tokens)
    assert np.array_equal(store.expert_counts, tables.counts) and np.array_equal(store.routed, tables.routed)

    resume = interrupt_after(monkeypatch, MoERunner, "count", after=1)
    cut = tmp_path / "cut.zarr"
    assert run(profile, "lna-profile", [*args, "--out", str(cut)]) == 130
    resume()
    assert run(profile, "lna-profile", [*args, "--out", str(cut)]) == 0
    again = open_store(cut)
    assert np.array_equal(again.expert_counts, store.expert_counts) and np.array_equal(again.routed, store.routed)

    res = tmp_path / "res"
    assert run(experts, "lna experts", [str(out), "-o", str(res), "--min-routed", "1", "--top-rate", "0.05"]) == 0
    saved = json.loads((res / "expert_neurons.json").read_text())
    assert saved["languages"] == ["en", "zh"] and saved["min_routed"] == 1
    assert (res / "routing_entropy.png").is_file() and (res / "language_experts.png").is_file()


def test_make_runner_picks_moe_and_refuses_vllm(moe_models):
    from lna.runners import make_runner

    runner, backend, _ = make_runner(moe_models["olmoe"], backend="auto", device="cpu")
    assert isinstance(runner, MoERunner) and backend == "hf"
    with pytest.raises(LnaError, match="vLLM's fused-MoE") as err:
        make_runner(moe_models["olmoe"], backend="vllm", device="cpu")
    assert "\n" not in str(err.value)


def test_ablation_masks_from_identification(runner, arch):
    """identify's (layer, expert, neuron) sets and language experts' (layer, expert) pairs
    become exactly those ExpertMasks entries; whole experts mask every neuron of theirs."""
    from lna.identification.experts import ablation_masks

    lay = runner.layout
    layer = lay.moe_layers[-1]
    shared_layer = next((i for i, w in enumerate(lay.always_on) if w), None)
    sets = [np.array([[layer, 3, 7], [layer, 0, 0]] + ([[shared_layer, -1, 2]] if shared_layer is not None else [])),
            np.zeros((0, 3), np.int64)]
    masks = ablation_masks(runner, neurons=sets, experts=[np.zeros((0, 2)), np.array([[layer, 6]])])
    want = np.zeros_like(masks.experts)
    want[0, layer, 3, 7] = want[0, layer, 0, 0] = True
    want[1, layer, 6] = True
    assert np.array_equal(masks.experts, want)
    assert masks.always_on.sum() == (shared_layer is not None) and masks.always_on[1].sum() == 0
    samples = random_samples(9, LANGS, questions=2, max_response=15)
    whole = runner.nll(samples, masks, [1] * len(samples))
    direct = np.zeros_like(masks.experts[:1])
    direct[0, layer, 6] = True
    assert np.array_equal(whole, runner.nll(samples, ExpertMasks(None, direct), [0] * len(samples)))
    with pytest.raises(LnaError, match="not in this model"):
        ablation_masks(runner, experts=[np.array([[layer, 99]])])


def test_offsets_are_refused_in_one_line(runner):
    """The dense runner's additive path (lna-steer --methods diffmean) is not the MoE runner's."""
    masks = random_masks(runner, 1, 0)
    with pytest.raises(LnaError, match="offsets") as err:
        runner.nll(random_samples(0, ["en"], questions=1), masks, [0], offsets=np.zeros(3, np.float32))
    assert "\n" not in str(err.value)

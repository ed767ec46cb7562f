"""Identification inside experts and language experts (lna.identification.experts) on a
synthetic MoE store with planted language experts and planted expert neurons: both methods
find exactly the planted ones; experts with too few routed tokens are not judged."""
import numpy as np
import pytest

from lna.core.errors import LnaError
from lna.identification import experts as ex
from lna.storage.counts import CountStore

LANGS = ["en", "zh", "sw"]
L, E, I, TOKENS = 3, 6, 40, 10_000
ALWAYS_ON = [24, 0, 0]  # layer 0: a dense MLP (as DeepSeek's first layers), no experts routed there
# planted language experts: (layer, expert, language)
PLANTED_EXPERTS = {(1, 2, 1), (2, 4, 2), (2, 0, 0)}
# planted neurons: (layer, expert, neuron, language); expert -1: the always-on MLP
PLANTED_NEURONS = {(1, 1, 7, 0), (1, 3, 39, 1), (2, 5, 0, 2), (2, 1, 20, 1), (0, -1, 23, 2)}
TOO_FEW = (2, 3)  # sw routes 50 tokens there: below MIN_ROUTED, so not judged
DECOY = (2, 3, 11, 0)  # would look language-specific, but its expert is not judged


def synthetic_store():
    rng = np.random.default_rng(0)
    routed = np.zeros((L, E, len(LANGS)), np.int64)
    routed[1:] = rng.integers(3000, 3600, (L - 1, E, len(LANGS)))
    for layer, e, k in PLANTED_EXPERTS:
        routed[layer, e] = 800
        routed[layer, e, k] = 9000
    routed[TOO_FEW][2] = 50
    probs = rng.uniform(0.2, 0.4, (L, E, len(LANGS), I))
    dense_p = rng.uniform(0.2, 0.4, (L, len(LANGS), 24))
    for layer, e, j, k in PLANTED_NEURONS | {DECOY}:
        p = probs[layer, e] if e >= 0 else dense_p[layer]
        p[:, j] = 0.01
        p[k, j] = 0.9
    expert_counts = np.round(probs * routed[..., None]).astype(np.int64)
    counts = np.round(dense_p * TOKENS).astype(np.int64)
    counts[1:] = 0
    return CountStore(counts, np.full(len(LANGS), TOKENS), LANGS, {"model": "synthetic", "always_on": ALWAYS_ON},
                      expert_counts=expert_counts, routed=routed)


@pytest.mark.parametrize("method", ["ternary", "lape"])
def test_finds_exactly_the_planted_neurons(method):
    store = synthetic_store()
    judged_units = 1 + 2 * E - 1  # the dense MLP of layer 0, every expert of layers 1-2 but TOO_FEW
    judged = 24 + (2 * E - 1) * I
    result = ex.identify_experts(store, method=method, top_rate=len(PLANTED_NEURONS) / judged)
    found = {(int(a), int(b), int(c), k) for k, lang in enumerate(LANGS) for a, b, c in result.sets[lang]}
    assert found == PLANTED_NEURONS
    assert result.not_judged == [TOO_FEW]
    assert judged_units == 2 * E
    assert result.to_json()["sets"]["sw"] == [[0, -1, 23], [2, 5, 0]]


def test_finds_exactly_the_planted_language_experts(tmp_path):
    result = ex.language_experts(synthetic_store())
    found = {(int(a), int(b), k) for k, lang in enumerate(LANGS) for a, b in result.experts[lang]}
    assert found == PLANTED_EXPERTS
    store = synthetic_store()
    assert np.isnan(result.entropy[0]).all()  # a dense layer routes nothing
    for layer in (1, 2):  # against the definition, term by term
        for k in range(len(LANGS)):
            q = [r / store.routed[layer, :, k].sum() for r in store.routed[layer, :, k]]
            want = -sum(x * np.log(x) for x in q if x > 0) / np.log(E)
            assert abs(result.entropy[layer, k] - want) < 1e-12
    # a planted expert pulls its language's routing entropy below the others'
    assert result.entropy[1, 1] < min(result.entropy[1, 0], result.entropy[1, 2])
    ex.plot_routing_entropy(result, tmp_path / "entropy.png")
    ex.plot_language_experts(result, tmp_path / "experts.png")
    assert (tmp_path / "entropy.png").stat().st_size > 1000 and (tmp_path / "experts.png").stat().st_size > 1000


def test_refusals_are_one_line():
    store = synthetic_store()
    dense = CountStore(np.ones((2, 2, 3)), np.array([5, 5]), ["en", "zh"])
    experts_only = synthetic_store()
    experts_only.meta["always_on"] = [0, 0, 0]
    for call, match in ((lambda: ex.identify_experts(dense), "no experts"),
                        (lambda: ex.identify_experts(experts_only, min_routed=10**6), "no expert has"),
                        (lambda: ex.identify_experts(store, top_rate=1e-9), "selects no neuron"),
                        (lambda: ex.language_experts(store, ratio=1.0), "must exceed 1")):
        with pytest.raises(LnaError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


def test_dense_identify_refuses_a_moe_store():
    from lna.identification.identify import identify_store

    with pytest.raises(LnaError, match="lna experts"):
        identify_store(synthetic_store())


def test_cli_writes_results_and_fails_in_one_line(tmp_path, capsys):
    import json

    from lna.cli import run
    from lna.cli.experts import experts
    from lna.storage.store import save_store

    save_store(synthetic_store(), tmp_path / "moe.zarr")
    assert run(experts, "lna experts", [str(tmp_path / "moe.zarr"), "-o", str(tmp_path / "r"), "--langs", "en,zh",
                                        "--top-rate", "0.002"]) == 0
    got = json.loads((tmp_path / "r" / "expert_neurons.json").read_text())
    assert got["languages"] == ["en", "zh"] and got["min_routed"] == 100
    routing = json.loads((tmp_path / "r" / "language_experts.json").read_text())
    assert routing["experts"]["zh"] == [[1, 2]] and routing["routing_entropy"][0] == [None, None]
    capsys.readouterr()
    save_store(CountStore(np.ones((2, 2, 3)), np.array([5, 5]), ["en", "zh"]), tmp_path / "dense.zarr")
    assert run(experts, "lna experts", [str(tmp_path / "dense.zarr"), "-o", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no experts" in err and not (tmp_path / "d").exists()

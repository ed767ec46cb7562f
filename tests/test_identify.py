"""Identification: the released neuron sets, a hand-computed case, a naive reference, properties."""
import json
import math

import numpy as np
import pytest

from lna.core.errors import LnaError
from lna.identification.identify import (activation_threshold, auto_lambda, expected_max, identify, identify_store,
                          normalised_entropy, Ternary)
from lna.storage.import_counts import import_counts

REF = "reference/mistralmathoctopus7b-mgsm-counts.npz"
MASK = "reference/mistralmathoctopus7b-mgsm-mask-0.01-0.109375.json"


# -- the acceptance case: the study's released sets ---------------------------------------
def test_reproduces_released_mask(shared_data):
    store = import_counts([shared_data / REF])
    ns = identify_store(store)
    released = json.loads((shared_data / MASK).read_text())
    assert ns.lam == 0.109375 and ns.lambda_auto
    assert round(ns.tau, 6) == 0.564436
    assert list(released) == ns.languages
    for lang, layers in released.items():
        assert len(layers) == 32
        for i, layer in enumerate(layers):
            assert ns.sets[lang][i].tolist() == layer, (lang, i)
    # The sizes quoted by docs/method.md ("Lambda and tau") follow.
    assert {lang: sum(map(len, ns.sets[lang])) for lang in ns.languages} == {
        "en": 142, "ru": 556, "es": 523, "fr": 821, "de": 941,
        "zh": 412, "ja": 676, "bn": 948, "th": 622, "sw": 666}


# -- a case small enough to compute by hand -------------------------------------------------
# One layer, four neurons, two languages (rows: neurons, columns: languages).
HAND = np.array([[0.8, 0.0],     # n0: one language only
                 [1.0, 1.0],     # n1: always on in both: general
                 [0.06, 0.04],   # n2: weak, fairly even
                 [0.0, 0.0]])    # n3: never on


def hand_probs():
    return HAND.T[None]  # [layer, language, neuron]


def test_hand_scores():
    e = normalised_entropy(hand_probs())[0]
    ln2 = math.log(2)
    # n0: q = (1, 0) clamped to (1, 1e-12) and renormalised.
    q = np.array([1.0, 1e-12]) / (1.0 + 1e-12)
    assert e[0] == pytest.approx(-(q * np.log(q)).sum() / ln2, rel=1e-12)
    assert e[1] == pytest.approx(1.0, rel=1e-12)
    assert e[2] == pytest.approx(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / ln2, rel=1e-12)
    assert e[3] == pytest.approx(1.0, rel=1e-12)  # no activity: uniform
    assert expected_max(2) == 0.75
    assert expected_max(10) == pytest.approx(0.292897, abs=1e-6)


def test_hand_tau():
    # Sorted probabilities: 0 0 0 0.04 0.06 0.8 1 1.
    assert activation_threshold(hand_probs(), 0.5) == 0.04  # rank round(4.0) = 4
    assert activation_threshold(hand_probs(), 0.95) == 1.0  # rank round(7.6) = 8
    assert activation_threshold(hand_probs(), 0.3) == 0.0  # rank round(2.4) = 2


def test_hand_lambda_and_classification():
    # tau = 0.04: N = (1, 2, 1, 0). Two neurons are selected; n0 always is (score ~ 0).
    # The second is n2 while its score is below n1's:
    #   e2 - lam * 0.06 / 0.75 < 1 - lam * 1.0 / 0.75  <=>  lam < (1 - e2) / (1/0.75 - 0.06/0.75)
    # and n1 (N = l) is selected above that crossing, so auto lambda stops just below it.
    e2 = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(2)
    crossing = (1 - e2) / (1 / 0.75 - 0.06 / 0.75)
    ns = identify(hand_probs(), ["en", "zh"], top_rate=0.5, tau_quantile=0.5)
    assert ns.tau == 0.04
    assert ns.lambda_auto and crossing - 1e-3 < ns.lam < crossing
    assert [a.tolist() for a in ns.sets["en"]] == [[0, 2]]
    assert [a.tolist() for a in ns.sets["zh"]] == [[]]
    assert [a.tolist() for a in ns.general] == [[1]]
    assert [a.tolist() for a in ns.split("specific")["en"]] == [[0, 2]]
    # Above the crossing the general neuron n1 is selected; it is listed under both.
    fixed = identify(hand_probs(), ["en", "zh"], top_rate=0.5, tau_quantile=0.5, lam=crossing + 1e-3)
    assert [a.tolist() for a in fixed.sets["en"]] == [[0, 1]]
    assert [a.tolist() for a in fixed.sets["zh"]] == [[1]]


def test_bisection_midpoints():
    """auto_lambda takes the study's midpoints: the last one that passes a monotone test."""
    crossing = 0.0417

    class Fake(Ternary):
        def shared_by_all(self, lam):
            return lam >= crossing

    fake = Fake(None, None, None, 1, 2)
    lo, hi, best = 0.0, 0.2, 0.0
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2.0
        lo, hi, best = (mid, hi, mid) if mid < crossing else (lo, mid, best)
    assert auto_lambda(fake) == best
    assert crossing - 1e-3 < best < crossing


def test_auto_lambda_edges():
    class Always(Ternary):
        def shared_by_all(self, lam):
            return True

    class Never(Ternary):
        def shared_by_all(self, lam):
            return False

    assert auto_lambda(Never(None, None, None, 1, 2)) == 0.2
    with pytest.raises(LnaError, match="--lambda"):
        auto_lambda(Always(None, None, None, 1, 2))


# -- a slow, plain-Python reference of docs/method.md ---------------------------------------------
def naive(probs, method="ternary", top_rate=0.05, quantile=0.95, lam=0.0):
    L, K, H = probs.shape
    flat = sorted(float(x) for x in probs.ravel())
    tau = flat[min(max(round(len(flat) * quantile), 1), len(flat)) - 1]
    cl = sum(1 / j for j in range(1, K + 1)) / K
    scores = []
    for i in range(L):
        for h in range(H):
            p = [float(probs[i, k, h]) for k in range(K)]
            s = sum(p)
            n_above = sum(x > tau for x in p)
            if method == "ternary":
                q = [x / s for x in p] if s > 0 else [1 / K] * K
                q = [max(x, 1e-12) for x in q]
                q = [x / sum(q) for x in q]
                score = -sum(x * math.log(x) for x in q) / math.log(K) - lam * max(p) / cl
            else:
                q = [x / s for x in p] if s > 0 else [0.0] * K
                score = -sum(x * math.log(x) for x in q if x > 0) if n_above else math.inf
            scores.append((score, i * H + h))
    k = round(L * H * top_rate)
    chosen = sorted(idx for _, idx in sorted(scores)[:k])
    sets = {k_: [[] for _ in range(L)] for k_ in range(K)}
    for idx in chosen:
        i, h = divmod(idx, H)
        for k_ in range(K):
            if probs[i, k_, h] > tau:
                sets[k_][i].append(h)
    general = [[h for h in range(H) if all(probs[i, k_, h] > tau for k_ in range(K))] for i in range(L)]
    n_all = [sum(probs[i, k_, h] > tau for k_ in range(K)) for idx in chosen for i, h in [divmod(idx, H)]]
    return tau, sets, general, n_all


def random_probs(seed, L=3, K=4, H=100):
    """Three kinds of neurons, as in real counts: mostly quiet ones, ones on for every
    language (general), and ones that differ much between languages."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=(L, 1, H), p=[0.7, 0.1, 0.2])
    rate = np.choose(kind, [rng.uniform(0.01, 0.3, (L, 1, H)), rng.uniform(1.5, 3.0, (L, 1, H)),
                            rng.uniform(0.2, 1.5, (L, 1, H))])
    spread = np.choose(kind, [0.3, 0.1, 1.2])
    return 1 - np.exp(-rate * np.exp(spread * rng.standard_normal((L, K, H))))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method, lam, top_rate, quantile", [
    ("ternary", 0.0, 0.1, 0.85), ("ternary", 0.15, 0.1, 0.9), ("lape", None, 0.15, 0.85)])
def test_matches_naive_reference(seed, method, lam, top_rate, quantile):
    p = random_probs(seed)
    langs = ["en", "zh", "ja", "sw"]
    ns = identify(p, langs, method=method, top_rate=top_rate, tau_quantile=quantile,
                  lam="auto" if lam is None else lam)
    tau, sets, general, _ = naive(p, method, top_rate, quantile, lam or 0.0)
    assert ns.tau == tau
    for k, lang in enumerate(langs):
        assert [a.tolist() for a in ns.sets[lang]] == sets[k]
    assert [a.tolist() for a in ns.general] == general
    assert ns.lam == lam


@pytest.mark.parametrize("seed, quantile", [(3, 0.8), (5, 0.8), (3, 0.85)])
def test_auto_lambda_matches_naive_bisection(seed, quantile):
    p = random_probs(seed)
    ns = identify(p, ["en", "zh", "ja", "sw"], top_rate=0.15, tau_quantile=quantile)
    assert 0 < ns.lam < 0.2  # the bisection really ran

    def shared(lam):
        return 4 in naive(p, top_rate=0.15, quantile=quantile, lam=lam)[3]

    lo, hi, best = 0.0, 0.2, 0.0
    assert shared(hi) and not shared(lo)
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2.0
        if shared(mid):
            hi = mid
        else:
            best = lo = mid
    assert ns.lam == best
    assert not any(n == 4 for n in naive(p, top_rate=0.15, quantile=quantile, lam=best)[3])


# -- properties ---------------------------------------------------------------------------------
def planted(seed, K=5, L=4, H=200):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.0, 0.3, (L, K, H))
    only = {k: (int(rng.integers(L)), 10 + k) for k in range(K)}  # one neuron per language
    for k, (i, h) in only.items():
        p[i, :, h] = 0.0
        p[i, k, h] = 0.95
    everyone = (1, 150)
    p[everyone[0], :, everyone[1]] = 0.97
    return p, only, everyone


@pytest.mark.parametrize("seed", range(4))
def test_properties(seed):
    p, only, everyone = planted(seed)
    langs = ["en", "zh", "ru", "de", "fr"]
    ns = identify(p, langs, top_rate=0.01, tau_quantile=0.95)
    specific = ns.split("specific")
    for k, (i, h) in only.items():
        assert h in specific[langs[k]][i]
        assert all(h not in ns.sets[other][i] for other in langs if other != langs[k])
    i, h = everyone
    assert h in ns.general[i]
    assert all(h not in ns.sets[lang][i] for lang in langs)
    # N never equals l among the selected neurons (auto lambda).
    for idx, n in ns.shared_by():
        assert (n < len(langs)).all()


def test_langs_subset_and_validation(shared_data):
    store = import_counts([shared_data / REF])
    sub = identify_store(store, langs="en,zh,ja")
    assert sub.languages == ["en", "zh", "ja"]
    ref = identify(store.probabilities()[:, [0, 5, 6]], ["en", "zh", "ja"])
    assert all(np.array_equal(a, b) for lang in sub.languages for a, b in zip(sub.sets[lang], ref.sets[lang]))
    with pytest.raises(LnaError, match="unknown language 'xx'"):
        identify_store(store, langs="en,xx")
    with pytest.raises(LnaError, match="has no te"):
        identify_store(store, langs="en,te")


@pytest.mark.parametrize("kwargs, message", [
    ({"top_rate": 0.0}, "top-rate"),
    ({"top_rate": 1e-6}, "selects no neuron"),
    ({"tau_quantile": 1.0}, "tau-quantile"),
    ({"method": "magic"}, "unknown method"),
    ({"method": "lape", "lam": 0.1}, "ternary method only"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(LnaError, match=message):
        identify(random_probs(0), ["en", "zh", "ja", "sw"], **kwargs)


def test_one_language_is_refused():
    with pytest.raises(LnaError, match="at least two"):
        identify(random_probs(0)[:, :1], ["en"])

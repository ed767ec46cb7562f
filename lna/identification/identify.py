"""Neuron identification: the ternary method of the study and Tang et al.'s LAPE
(docs/method.md, "Ternary identification", "Lambda and tau", "LAPE").

Everything is vectorised over probabilities p[layer, language, neuron] (float64):
the parts of the ternary score that do not depend on lambda (normalised entropy, scaled
maximum) and the number of languages above tau per neuron are computed once, so each
step of the lambda bisection is one partial selection and a check.
"""
import math
from dataclasses import dataclass

import numpy as np

from lna.core.errors import LnaError, note
from lna.identification.neurons import NeuronSets

LAMBDA_RANGE = (0.0, 0.2)
LAMBDA_EPS = 1e-3
CLAMP = 1e-12


def activation_threshold(probs: np.ndarray, quantile: float = 0.95) -> float:
    """tau: the order statistic of 1-based rank round(quantile * n) of all probabilities."""
    flat = probs.ravel()
    rank = min(max(round(flat.size * quantile), 1), flat.size)
    return float(np.partition(flat, rank - 1)[rank - 1])


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """e[layer, neuron] = H(q) / ln l, q = p normalised over languages (uniform where all
    are 0), clamped at 1e-12 and renormalised."""
    K = probs.shape[1]
    total = probs.sum(axis=1, keepdims=True)
    q = np.divide(probs, total, out=np.full_like(probs, 1.0 / K), where=total > 0)
    np.maximum(q, CLAMP, out=q)
    q /= q.sum(axis=1, keepdims=True)
    return -(q * np.log(q)).sum(axis=1) / math.log(K)


def expected_max(K: int) -> float:
    """c_l = (1/l) sum_{j=1..l} 1/j, the expected maximum of a uniform distribution over l items."""
    return sum(1.0 / j for j in range(1, K + 1)) / K


def lape_entropy(probs: np.ndarray, n_above: np.ndarray) -> np.ndarray:
    """Tang et al.: plain entropy of q (0 log 0 = 0), +inf for neurons with no language above tau."""
    total = probs.sum(axis=1, keepdims=True)
    q = np.divide(probs, total, out=np.zeros_like(probs), where=total > 0)
    logq = np.log(q, out=np.zeros_like(q), where=q > 0)
    ent = -(q * logq).sum(axis=1)
    ent[n_above == 0] = np.inf
    return ent


def lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat indices of the k lowest scores; ties at the cut go to the lowest indices."""
    flat = scores.ravel()
    if k >= flat.size:
        return np.arange(flat.size)
    cut = np.partition(flat, k - 1)[k - 1]
    below = np.flatnonzero(flat < cut)
    ties = np.flatnonzero(flat == cut)[: k - below.size]
    return np.sort(np.concatenate([below, ties]))


@dataclass
class Ternary:
    """The lambda-independent parts of the ternary score."""
    entropy: np.ndarray  # e [layer, neuron]
    scaled_max: np.ndarray  # max_k p / c_l [layer, neuron]
    n_above: np.ndarray  # N, languages above tau [layer, neuron]
    k: int  # neurons to select
    languages: int  # l

    def select(self, lam: float) -> np.ndarray:
        return lowest(self.entropy - lam * self.scaled_max, self.k)

    def shared_by_all(self, lam: float) -> bool:
        """Does the selection at this lambda hold a neuron with N = l?"""
        return bool((self.n_above.ravel()[self.select(lam)] == self.languages).any())


def auto_lambda(t: "Ternary", lo: float = LAMBDA_RANGE[0], hi: float = LAMBDA_RANGE[1],
                eps: float = LAMBDA_EPS) -> float:
    """The largest lambda in [lo, hi] (bisection to eps) whose selection has no neuron shared
    by all languages. Same midpoints as the study's sweep, so the same float comes out."""
    if not t.shared_by_all(hi):
        return hi
    if t.shared_by_all(lo):
        raise LnaError(
            f"no lambda in [{lo}, {hi}] keeps the selected neurons from being shared by all "
            f"{t.languages} languages; give --lambda X explicitly or a smaller --top-rate"
        )
    best = lo
    while hi - lo > eps:
        mid = (lo + hi) / 2.0
        if t.shared_by_all(mid):
            hi = mid
        else:
            best = lo = mid
    return best


def identify(probs: np.ndarray, languages, *, method: str = "ternary", top_rate: float = 0.01,
             tau_quantile: float = 0.95, lam="auto", source: dict | None = None) -> NeuronSets:
    """Neuron sets from probabilities p[layer, language, neuron] (docs/method.md, "Ternary identification")."""
    probs = np.asarray(probs, dtype=np.float64)
    languages = list(languages)
    L, K, H = probs.shape
    if K != len(languages):
        raise LnaError(f"{K} languages of probabilities but {len(languages)} language codes")
    if K < 2:
        raise LnaError(f"identification needs at least two languages, got {', '.join(languages)}")
    if not 0 < top_rate <= 1:
        raise LnaError(f"--top-rate must lie in (0, 1], got {top_rate}")
    if not 0 < tau_quantile < 1:
        raise LnaError(f"--tau-quantile must lie in (0, 1), got {tau_quantile}")
    k = round(L * H * top_rate)
    if k < 1:
        raise LnaError(f"--top-rate {top_rate} selects no neuron of {L} x {H}; raise it")

    tau = activation_threshold(probs, tau_quantile)
    above = probs > tau  # [layer, language, neuron]
    n_above = above.sum(axis=1, dtype=np.int16)

    lam_auto = False
    if method == "ternary":
        t = Ternary(normalised_entropy(probs), probs.max(axis=1) / expected_max(K), n_above, k, K)
        if lam == "auto":
            lam, lam_auto = auto_lambda(t), True
        lam = float(lam)
        if not 0 <= lam < math.inf:
            raise LnaError(f"lambda must be auto or a number >= 0, got {lam:g}")
        selected = t.select(lam)
    elif method == "lape":
        if lam not in ("auto", None):
            raise LnaError("--lambda applies to the ternary method only; drop it for --method lape")
        lam = None
        selected = lowest(lape_entropy(probs, n_above), k)
    else:
        raise LnaError(f"unknown method {method!r}: use ternary or lape")

    layer, neuron = np.divmod(selected, H)
    bounds = np.searchsorted(layer, np.arange(L + 1))  # selected is sorted, so layer-major
    sets = {}
    for j, lang in enumerate(languages):
        hit = above[layer, j, neuron]
        sets[lang] = [neuron[bounds[i]:bounds[i + 1]][hit[bounds[i]:bounds[i + 1]]] for i in range(L)]
    general = [np.flatnonzero(n_above[i] == K) for i in range(L)]
    return NeuronSets(method, float(top_rate), lam, tau, languages, L, H, sets, general,
                      dict(source or {}), float(tau_quantile), lam_auto)


def identify_store(store, *, langs=None, **options) -> NeuronSets:
    """Identify on a count store (optionally a subset of its languages: codes or "en,zh,...")."""
    if isinstance(langs, str):
        from lna.core.languages import parse_langs

        langs = parse_langs(langs, store.languages)
    if store.has_experts:  # its counts table is padded per layer, its experts are elsewhere
        raise LnaError("a mixture-of-experts count store: identify its expert neurons and language experts with "
                       "`lna experts STORE -o DIR` (docs/moe.md)")
    if langs is not None:
        store = store.select(langs)
    source = {"model": store.meta.get("model"), "model_name": store.meta.get("model_name"),
              "model_fingerprint": store.meta.get("model_fingerprint"),
              "model_fingerprint_legacy": store.meta.get("model_fingerprint_legacy"),
              "dataset": store.meta.get("dataset"),
              "provenance": store.meta.get("provenance", "profile"),
              "tokens": {lang: int(n) for lang, n in zip(store.languages, store.tokens)}}
    source.update(options.pop("source", {}) or {})
    empty = [lang for lang, n in zip(store.languages, store.tokens) if n <= 0]
    if empty:
        raise LnaError(f"the store counted no response tokens for {', '.join(empty)}; "
                       "profile them or leave them out with --langs")
    found = identify(store.probabilities(), store.languages, source=source, **options)
    if store.meta.get("shard"):  # a single shard, or a --partial merge: part of a run's questions
        from lna.profiling.shards import describe

        note(f"{source.get('store') or 'the store'} holds {describe(store.meta['shard'])} of its run only: these "
             "neurons come from part of its questions; `lna merge` all the shards for the whole run's")
    return found


def neuron_sets_from(path, *, allow_partial: bool = False, langs=None, **options) -> NeuronSets:
    """A neuron-set JSON as it is, or a count store identified with `options`."""
    from pathlib import Path

    from lna.identification import neurons
    from lna.storage.store import is_store, open_store

    path = Path(path)
    if path.is_dir() or is_store(path):
        store = open_store(path, allow_partial=allow_partial, sums=False)
        return identify_store(store, langs=langs, source={"store": str(path)}, **options)
    if langs is not None:
        raise LnaError(f"{path}: --langs needs a count store (neuron sets are identified over all their languages)")
    return neurons.load(path)

"""Language neurons inside experts, and language-specific experts (docs/moe.md).

Expert neurons. A routed expert's neuron j has, per language l, the activation probability
p = expert_counts / routed: over the tokens of l routed to that expert, not over all of l's
tokens (a neuron cannot fire on tokens its expert never sees). An expert is judged only
where every language routed at least `min_routed` tokens to it (default 100): below that
its probabilities are too noisy to compare, and its neurons are listed as not judged, never
as language-specific or not. Always-on MLPs (shared experts, dense layers) are units like
experts, with p = counts / tokens. Units have different widths (a shared expert is wider);
the study's ternary method and LAPE (lna.identification.identify) run unchanged over all
judged neurons of all units together: tau is the quantile of their probabilities, the top
rate a share of them, and padding columns are never scored.

Language experts. share[layer, expert, l] = routed / tokens of l: the fraction of l's
tokens routed to the expert (summing to top_k over a layer's experts). Per layer and
language, the routing entropy of share / top_k, normalised by ln(experts) (1: l uses every
expert alike; lower: it concentrates on few). An expert is specific to l where its share
for l is at least `ratio` times its largest share for any other language and at least
the uniform share top_k / experts, with at least `min_routed` tokens of l routed to it.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from lna.core.errors import LnaError
from lna.identification.identify import (Ternary, activation_threshold, auto_lambda, expected_max, lape_entropy,
                                         lowest, normalised_entropy)

MIN_ROUTED = 100  # routed tokens per language below which an expert's neurons are not judged
RATIO = 3.0  # a language expert's share for its language over its largest other share
SHARED = -1  # the expert index of a layer's always-on MLP (shared expert or dense MLP)


@dataclass
class ExpertNeuronSets:
    method: str
    languages: list
    tau: float
    lam: float | None
    top_rate: float
    min_routed: int
    sets: dict  # lang -> int64 [n, 3]: (layer, expert, neuron), expert -1 = always-on MLP
    not_judged: list  # (layer, expert) with fewer than min_routed tokens of some language
    source: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": "lna-expert-neurons/1", "method": self.method, "languages": self.languages,
                "tau": self.tau, "lambda": self.lam, "top_rate": self.top_rate, "min_routed": self.min_routed,
                "sets": {lang: a.tolist() for lang, a in self.sets.items()},
                "not_judged": [list(u) for u in self.not_judged], "source": self.source}


def _units(store, min_routed: int):
    """(probabilities [unit, language, width], valid [unit, width], units [(layer, expert)],
    not judged [(layer, expert)])."""
    if not store.has_experts:
        raise LnaError("the store has no experts (a dense model's store): use lna-identify")
    empty = [lang for lang, n in zip(store.languages, store.tokens) if n <= 0]
    if empty:
        raise LnaError(f"the store counted no response tokens for {', '.join(empty)}; profile them or leave them out")
    widths = store.meta.get("always_on") or [store.neurons] * store.layers
    ec, routed = store.expert_counts, store.routed
    L, E, K, I = ec.shape
    W = max([I] + list(widths))
    probs, valid, units, skipped = [], [], [], []
    for layer in range(L):
        if widths[layer]:
            p = np.zeros((K, W))
            p[:, :widths[layer]] = store.counts[layer, :, :widths[layer]] / store.tokens[:, None]
            probs.append(p)
            valid.append(np.arange(W) < widths[layer])
            units.append((layer, SHARED))
        for e in range(E):
            r = routed[layer, e]
            if not r.any():
                continue  # a dense layer's experts, or an expert no token chose: nothing to judge
            if (r < min_routed).any():
                skipped.append((layer, e))
                continue
            p = np.zeros((K, W))
            p[:, :I] = ec[layer, e] / r[:, None]
            probs.append(p)
            valid.append(np.arange(W) < I)
            units.append((layer, e))
    if not units:
        raise LnaError(f"no expert has {min_routed} routed tokens of every language; profile more tokens or lower "
                       "--min-routed (the noisier the probabilities, the less an identification means)")
    return np.stack(probs), np.stack(valid), units, skipped


def identify_experts(store, *, method: str = "ternary", top_rate: float = 0.01, tau_quantile: float = 0.95,
                     lam="auto", min_routed: int = MIN_ROUTED) -> ExpertNeuronSets:
    """Language neurons of the judged experts and always-on MLPs of a MoE store."""
    K = len(store.languages)
    if K < 2:
        raise LnaError(f"identification needs at least two languages, got {', '.join(store.languages)}")
    probs, valid, units, skipped = _units(store, min_routed)
    judged = int(valid.sum())
    k = round(judged * top_rate)
    if not 0 < top_rate <= 1 or k < 1:
        raise LnaError(f"--top-rate {top_rate} selects no neuron of the {judged} judged; raise it (at most 1)")
    tau = activation_threshold(probs.transpose(0, 2, 1)[valid], tau_quantile)
    above = (probs > tau) & valid[:, None, :]
    n_above = above.sum(axis=1, dtype=np.int16)
    if method == "ternary":
        entropy = np.where(valid, normalised_entropy(probs), np.inf)  # padding: never selected
        t = Ternary(entropy, probs.max(axis=1) / expected_max(K), n_above, k, K)
        lam = auto_lambda(t) if lam == "auto" else float(lam)
        selected = t.select(lam)
    elif method == "lape":
        lam = None
        selected = lowest(lape_entropy(probs, n_above), k)  # padding has no language above tau: +inf
    else:
        raise LnaError(f"unknown method {method!r}: use ternary or lape")
    unit, neuron = np.divmod(selected, probs.shape[2])
    keep = valid[unit, neuron]
    unit, neuron = unit[keep], neuron[keep]
    where = np.array(units, np.int64)[unit] if len(unit) else np.zeros((0, 2), np.int64)
    sets = {}
    for j, lang in enumerate(store.languages):
        hit = above[unit, j, neuron]
        sets[lang] = np.column_stack([where[hit], neuron[hit]]).astype(np.int64)
    return ExpertNeuronSets(method, list(store.languages), float(tau), lam, float(top_rate), int(min_routed), sets,
                            skipped, source_of(store))


def source_of(store) -> dict:
    """What a result of `store` records of its model: name, identity (lna-ablate checks it
    against the model it runs) and shape (layers, experts, neurons per expert, always-on
    widths), so that sets are refused on a model of another shape."""
    L, E, _, I = store.expert_counts.shape
    meta = store.meta
    return {"model": meta.get("model"), "model_name": meta.get("model_name"),
            "model_fingerprint": meta.get("model_fingerprint"),
            "model_fingerprint_legacy": meta.get("model_fingerprint_legacy"),
            "shape": {"layers": int(L), "experts": int(E), "expert_neurons": int(I),
                      "always_on": [int(w) for w in meta.get("always_on") or [store.neurons] * L]}}


# -- language experts -----------------------------------------------------------------------

@dataclass
class LanguageExperts:
    languages: list
    share: np.ndarray  # float64 [layer, expert, language]: fraction of the language's tokens routed there
    entropy: np.ndarray  # float64 [layer, language]: normalised routing entropy (NaN: layer without experts)
    experts: dict  # lang -> int64 [n, 2]: (layer, expert) specific to it
    ratio: float
    min_routed: int


def language_experts(store, *, ratio: float = RATIO, min_routed: int = MIN_ROUTED) -> LanguageExperts:
    if not store.has_experts:
        raise LnaError("the store has no experts (a dense model's store)")
    if ratio <= 1:
        raise LnaError(f"--ratio must exceed 1 (a language's share over every other's), got {ratio:g}")
    routed, tokens = store.routed.astype(np.float64), store.tokens
    if (tokens <= 0).any():
        raise LnaError("the store counted no response tokens for some language; leave it out")
    L, E, K = routed.shape
    share = routed / tokens[None, None, :]
    top_k = share.sum(axis=1)  # [layer, language]: top_k in MoE layers, 0 in dense ones
    q = np.divide(share, top_k[:, None, :], out=np.zeros_like(share), where=top_k[:, None, :] > 0)
    logq = np.log(q, out=np.zeros_like(q), where=q > 0)
    entropy = -(q * logq).sum(axis=1) / math.log(E) if E > 1 else np.zeros((L, K))
    entropy[top_k == 0] = np.nan
    experts = {}
    for j, lang in enumerate(store.languages):
        others = np.delete(share, j, axis=2).max(axis=2) if K > 1 else np.zeros((L, E))
        mine = share[:, :, j]
        hit = ((mine >= ratio * others) & (mine >= top_k[:, None, j] / E) & (routed[:, :, j] >= min_routed)
               & (top_k[:, None, j] > 0))
        experts[lang] = np.argwhere(hit).astype(np.int64)
    return LanguageExperts(list(store.languages), share, entropy, experts, float(ratio), int(min_routed))


# -- figures --------------------------------------------------------------------------------

def plot_routing_entropy(result: LanguageExperts, path, title: str = "") -> None:
    """Normalised routing entropy per layer, one line per language."""
    from lna.reports import plots

    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    layers = np.arange(result.entropy.shape[0])
    for j, lang in enumerate(result.languages):
        ax.plot(layers, result.entropy[:, j], marker="o", markersize=3, linewidth=1.5,
                color=plots.SERIES[j] if j < len(plots.SERIES) else None, label=lang)
    ax.set_xlabel("Layer")
    ax.set_ylabel("Routing entropy (normalised)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, ncol=max(1, len(result.languages) // 8))
    if title:
        ax.set_title(title)
    plots._save(fig, path)


def plot_language_experts(result: LanguageExperts, path, title: str = "") -> None:
    """[layer x expert] map of each expert's top-language share over its next language's
    (log2), language experts labelled with their language."""
    from lna.reports import plots

    plt = plots._pyplot()
    share = result.share
    ordered = np.sort(share, axis=2)
    first, second = ordered[:, :, -1], ordered[:, :, -2] if share.shape[2] > 1 else np.zeros(share.shape[:2])
    contrast = np.log2((first + 1e-9) / (second + 1e-9))
    L, E = contrast.shape
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.25 * E), min(10, 1.5 + 0.3 * L)))
    im = ax.imshow(contrast, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="log2(top share / next share)")
    if L * E <= 2000:  # labels stay readable
        for lang, where in result.experts.items():
            for layer, e in where:
                ax.text(e, layer, lang, ha="center", va="center", fontsize=6, color="white")
    ax.set_xlabel("Expert")
    ax.set_ylabel("Layer")
    if title:
        ax.set_title(title)
    plots._save(fig, path)


# -- interventions ----------------------------------------------------------------------------

def ablation_masks(runner, neurons=None, experts=None):
    """lna.runners.moe.ExpertMasks for `runner` (a MoERunner), one mask per entry: neurons, a
    list of int [n, 3] (layer, expert, neuron; expert -1: the always-on MLP), e.g. the sets
    of identify_experts; experts, a list of int [n, 2] (layer, expert) whose every neuron is
    masked, e.g. language_experts' experts. Give one list or both of one length."""
    from lna.runners.moe import ExpertMasks

    lay, L = runner.layout, runner.layers
    n = len(neurons if neurons is not None else experts or [])
    if neurons is not None and experts is not None and len(experts) != n:
        raise LnaError(f"{len(neurons)} neuron sets but {len(experts)} expert sets: one of each per mask")
    always = np.zeros((n, L, lay.neurons), bool)
    routed = np.zeros((n, L, lay.experts, lay.expert_neurons), bool)
    for m in range(n):
        for layer, e, j in np.asarray(neurons[m] if neurons is not None else np.zeros((0, 3)), np.int64).reshape(-1, 3):
            width = lay.always_on[layer] if e == SHARED and 0 <= layer < L else lay.expert_neurons
            if not (0 <= layer < L and -1 <= e < lay.experts and 0 <= j < width):
                raise LnaError(f"neuron (layer {layer}, expert {e}, neuron {j}) is not in this model "
                               f"({L} layers, {lay.experts} experts of {lay.expert_neurons} neurons)")
            if e == SHARED:
                always[m, layer, j] = True
            else:
                routed[m, layer, e, j] = True
        for layer, e in np.asarray(experts[m] if experts is not None else np.zeros((0, 2)), np.int64).reshape(-1, 2):
            if not (0 <= layer < L and 0 <= e < lay.experts):
                raise LnaError(f"expert (layer {layer}, expert {e}) is not in this model ({L} layers, "
                               f"{lay.experts} experts)")
            routed[m, layer, e] = True
    return ExpertMasks(always, routed)

"""The count store in memory: CountStore (counts, tokens, languages, the optional activation
sums and expert tables, the run's meta and its samples), its structural checks, and the
rules for combining stores (lna merge, a profile continuing a store). On disk, as a zarr
group: lna.storage.store (open_store, save_store).
"""
from dataclasses import dataclass, field, replace

import numpy as np

from lna.core.errors import LnaError
from lna.models import fingerprint
from lna.storage.manifest import Counted

# What a count means; stores that differ here must never be summed.
IDENTITY = ("counted", "activation", "layers", "neurons", "experts", "expert_neurons")
# The optional activation statistics (float64 [layer, language, neuron]), beside counts.
SUMS = ("sums", "active_sums")


@dataclass
class CountStore:
    counts: np.ndarray  # int64 [layer, language, neuron]
    tokens: np.ndarray  # int64 [language]
    languages: list[str]
    meta: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)  # lang -> lna.storage.manifest.Counted
    complete: bool = True
    # Activation statistics (float64 [layer, language, neuron], both or neither): per language,
    # the sum of act(gate) over counted tokens, and over those with gate > 0. NaN marks a
    # language whose sums are unknown (merged or resumed with counts that have none).
    sums: np.ndarray | None = None
    active_sums: np.ndarray | None = None
    # Mixture-of-experts models (both or neither): int64 [layer, expert, language, neuron]
    # counts of routed tokens with gate > 0, and int64 [layer, expert, language] routed tokens.
    expert_counts: np.ndarray | None = None
    routed: np.ndarray | None = None

    def __post_init__(self):
        self.counts = np.ascontiguousarray(self.counts, dtype=np.int64)
        self.tokens = np.ascontiguousarray(self.tokens, dtype=np.int64)
        if (self.sums is None) != (self.active_sums is None):
            raise LnaError("inconsistent count store: it has one of sums and active_sums without the other")
        if self.sums is not None:
            self.sums = np.ascontiguousarray(self.sums, dtype=np.float64)
            self.active_sums = np.ascontiguousarray(self.active_sums, dtype=np.float64)
        self.languages = list(self.languages)
        self.meta = dict(self.meta)
        self.meta.setdefault("counted", "response-tokens")
        self.meta.setdefault("activation", "silu(gate)>0")
        self.meta["layers"], self.meta["neurons"] = self.layers, self.neurons
        if (self.expert_counts is None) != (self.routed is None):
            raise LnaError("inconsistent count store: it has one of expert_counts and routed without the other")
        if self.expert_counts is not None:
            self.expert_counts = np.ascontiguousarray(self.expert_counts, dtype=np.int64)
            self.routed = np.ascontiguousarray(self.routed, dtype=np.int64)
            self.meta["experts"], self.meta["expert_neurons"] = self.expert_counts.shape[1], self.expert_counts.shape[3]
        self.samples = {lang: c if isinstance(c, Counted) else Counted(unknown=list(c))
                        for lang, c in self.samples.items()}
        validate(self)

    @property
    def layers(self) -> int:
        return self.counts.shape[0]

    @property
    def neurons(self) -> int:
        return self.counts.shape[2]

    @property
    def has_sums(self) -> bool:
        return self.sums is not None

    @property
    def has_experts(self) -> bool:
        return self.expert_counts is not None

    @classmethod
    def empty(cls, languages, layers, neurons, meta=None, sums: bool = False, experts=None) -> "CountStore":
        """experts: (experts, neurons per expert) for a mixture-of-experts model."""
        k = len(languages)
        zeros = (lambda: np.zeros((layers, k, neurons), np.float64)) if sums else (lambda: None)
        tables = {}
        if experts is not None:
            tables = {"expert_counts": np.zeros((layers, experts[0], k, experts[1]), np.int64),
                      "routed": np.zeros((layers, experts[0], k), np.int64)}
        return cls(np.zeros((layers, k, neurons), np.int64), np.zeros(k, np.int64), languages, meta or {},
                   sums=zeros(), active_sums=zeros(), **tables)

    def index(self, lang: str) -> int:
        if lang not in self.languages:
            raise LnaError(f"the store has no language {lang!r}: it has {', '.join(self.languages)}")
        return self.languages.index(lang)

    def add(self, k, counts, tokens, sums=None, active_sums=None, experts=None) -> None:
        """Add counts [layer, len(k), neuron] and tokens [len(k)] into the languages at indices k,
        and the activation sums where given (the store must keep them); experts: (expert
        counts [layer, expert, len(k), neuron], routed [layer, expert, len(k)]), which a
        mixture-of-experts store needs with every addition."""
        if (experts is None) != (not self.has_experts):
            raise LnaError("cannot add counts with and without experts into one store (a dense and a "
                           "mixture-of-experts count of one model?)")
        self.counts[:, k] += counts
        self.tokens[k] += tokens
        if sums is not None:
            self.sums[:, k] += sums
            self.active_sums[:, k] += active_sums
        if experts is not None:
            self.expert_counts[:, :, k] += experts[0]
            self.routed[:, :, k] += experts[1]

    def counted(self, lang: str) -> Counted:
        """The samples counted for `lang` (a fresh, empty record where there are none yet)."""
        return self.samples.setdefault(lang, Counted())

    def probabilities(self) -> np.ndarray:
        """p[layer, language, neuron] = counts / tokens (float64; 0 where nothing was counted)."""
        return self.counts / np.maximum(self.tokens, 1)[None, :, None]

    def mean_activation(self, lang: str, kind: str = "mean") -> np.ndarray:
        """float64 [layer, neuron]: the mean activation of each neuron on `lang`'s tokens,
        sums / tokens ("mean"), or on the tokens where it fired, active_sums / counts
        ("active-mean"; 0 where it never fired). One line where the store cannot say."""
        k = self.index(lang)
        if not self.has_sums:
            raise LnaError("the store has no activation sums (profiled without them, by an older lna, or "
                           "imported); re-profile with lna-profile --sums to get them")
        if np.isnan(self.sums[:, k]).any() or np.isnan(self.active_sums[:, k]).any():
            raise LnaError(f"the store's activation sums of {lang} are unknown (it was merged or resumed with "
                           f"{lang} counts that have none); re-profile {lang} into a new store with --sums")
        if not self.tokens[k]:
            raise LnaError(f"the store counted no {lang} tokens, so it has no mean activation for {lang}")
        if kind == "mean":
            return self.sums[:, k] / self.tokens[k]
        if kind == "active-mean":
            return np.divide(self.active_sums[:, k], self.counts[:, k], out=np.zeros(self.active_sums[:, k].shape),
                             where=self.counts[:, k] > 0)
        raise LnaError(f"unknown mean {kind!r}: use mean (sums / tokens) or active-mean (active_sums / counts)")

    def select(self, langs) -> "CountStore":
        idx = [self.index(lang) for lang in langs]
        samples = {lang: self.samples[lang] for lang in langs if lang in self.samples}
        pick = (lambda a: None if a is None else a[:, idx])
        pick2 = (lambda a: None if a is None else a[:, :, idx])
        return replace(self, counts=self.counts[:, idx], tokens=self.tokens[idx], languages=list(langs),
                       samples=samples, sums=pick(self.sums), active_sums=pick(self.active_sums),
                       expert_counts=pick2(self.expert_counts), routed=pick2(self.routed))

    def with_language(self, lang: str) -> "CountStore":
        """This store with `lang` added (zero counts, zero sums) if it is not there yet."""
        if lang in self.languages:
            return self
        shape = (self.layers, 1, self.neurons)
        grow = (lambda a: None if a is None else np.concatenate([a, np.zeros(shape, np.float64)], axis=1))
        grow2 = (lambda a: None if a is None else np.concatenate([a, np.zeros_like(a[:, :, :1])], axis=2))
        return replace(self, counts=np.concatenate([self.counts, np.zeros(shape, np.int64)], axis=1),
                       tokens=np.append(self.tokens, 0), languages=self.languages + [lang],
                       sums=grow(self.sums), active_sums=grow(self.active_sums),
                       expert_counts=grow2(self.expert_counts), routed=grow2(self.routed))

    def with_sums(self) -> "CountStore":
        """This store with sum tables: as they are, or, for a store without, unknown (NaN)
        for every language that counted tokens and 0 for the others."""
        if self.has_sums:
            return self
        unknown = np.where(self.tokens[None, :, None] > 0, np.nan, 0.0) * np.ones(self.counts.shape)
        return replace(self, sums=unknown, active_sums=unknown.copy())


def validate(store: CountStore) -> None:
    """Structural checks; a failure means a damaged or foreign store, never a user typo."""
    c, t = store.counts, store.tokens
    if c.ndim != 3 or t.shape != (c.shape[1],) or len(store.languages) != c.shape[1]:
        raise LnaError(
            f"inconsistent count store: counts {c.shape}, tokens {t.shape}, "
            f"{len(store.languages)} languages"
        )
    if len(set(store.languages)) != len(store.languages):
        raise LnaError(f"count store lists a language twice: {store.languages}")
    if (t < 0).any() or (c < 0).any():
        raise LnaError("count store holds negative counts: it is damaged; recreate it")
    # Exact counts never exceed the tokens counted; imported releases may (their
    # two-pass difference is noisy), so the check is for lna's own measurements.
    if store.meta.get("provenance", "profile") == "profile" and (c > t[None, :, None]).any():
        raise LnaError("count store has counts above its token totals: it is damaged; recreate it")
    if store.expert_counts is not None:
        ec, r = store.expert_counts, store.routed
        if ec.ndim != 4 or ec.shape[0] != c.shape[0] or ec.shape[2] != c.shape[1] or r.shape != ec.shape[:3]:
            raise LnaError(f"inconsistent count store: expert_counts {ec.shape} and routed {r.shape} must be "
                           f"[layer, expert, language(, neuron)] beside counts {c.shape}")
        # a token is routed to an expert at most once, and fires its neurons only when routed there
        if (ec < 0).any() or (r < 0).any() or (ec > r[..., None]).any() or (r > t[None, None, :]).any():
            raise LnaError("count store has expert counts above their routed tokens, or routed tokens above "
                           "the tokens counted: it is damaged; recreate it")
    if store.sums is not None:
        if store.sums.shape != c.shape or store.active_sums.shape != c.shape:
            raise LnaError(f"inconsistent count store: sums {store.sums.shape} and active_sums "
                           f"{store.active_sums.shape} must be shaped like counts {c.shape}")
        # act(gate) > 0 exactly where gate > 0: a neuron that never fired has an active sum
        # of exactly 0, and no active sum is negative (NaN: unknown, not checked).
        a = store.active_sums
        if (a < 0).any() or ((c == 0) & (a != 0) & ~np.isnan(a)).any():
            raise LnaError("count store has active sums that its counts rule out (negative, or nonzero "
                           "where the neuron never fired): it is damaged; recreate it")


# -- combining stores (lna merge, and a profile continuing a store) -------------------------
# Settings that change the counts of the same samples of the same model: stores that record
# different ones are never summed (one without the record, older or imported, is taken as
# it is). The backend and the way of counting (counted_during) change only gates within
# rounding of zero, and join.
SETTINGS = ("dtype", "template", "template_text", "kernel", "sampling")


def check_compatible(a: CountStore, b: CountStore, what: str = "stores", names=("the first", "the second")) -> dict:
    """Refuse stores that count different things, with other settings (SETTINGS) or from
    different models; return the model identity of both together
    (lna.models.fingerprint.combine)."""
    for key in IDENTITY:
        if a.meta.get(key) != b.meta.get(key):
            raise LnaError(f"cannot combine {what}: {key} differs ({a.meta.get(key)!r} vs {b.meta.get(key)!r})")
    for key in SETTINGS:
        x, y = a.meta.get(key), b.meta.get(key)
        if x and y and x != y:  # "" template_text: the data gave the prompts verbatim
            show = (lambda v: "another text" if key == "template_text" else repr(v))  # noqa: E731
            raise LnaError(f"cannot combine {what}: their {key} differs ({show(x)} in {names[0]}, {show(y)} in "
                           f"{names[1]}), so their counts are of different computations; profile them alike")
    ident = lambda m: {"model": m.get("model"), **fingerprint.recorded(m)}  # noqa: E731
    return fingerprint.combine(ident(a.meta), ident(b.meta), names, f"cannot combine {what}")


WAYS = ("sampling", "force-decoding")  # how lna-profile counted response tokens (lna.profiling.profile)


def counted_during(*ways) -> str | None:
    """The ways of counting of several stores or runs together: "sampling", "force-decoding"
    or "sampling+force-decoding" (None and "" add nothing; stores without the record were
    force-decoded). Stores counted both ways merge: they count the same quantity, the
    gate of every response token given the same tokens before it, and differ only in the
    order float sums run in (a KV-cached decoding step against a whole-sequence pass), the
    difference between batch sizes or backends, which flips only gates within rounding of
    zero."""
    parts = {p for w in ways if w for p in w.split("+")}
    unknown = parts - set(WAYS)
    if unknown:
        raise LnaError(f"unknown way of counting {sorted(unknown)[0]!r} in a store's counted_during; "
                       f"lna knows {', '.join(WAYS)}")
    return "+".join(w for w in WAYS if w in parts) or None

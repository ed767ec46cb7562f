"""`lna.identify`: language neurons of a count store as a Python object (`NeuronSets`).

`NeuronSets` is lna.identification.neurons.NeuronSets (the JSON format, its checks, the .pt
export) with per-language views and a notebook repr; it goes wherever lna takes neuron
sets (lna.steer, lna.ablate).
"""
from __future__ import annotations

import html
from dataclasses import fields
from pathlib import Path

import numpy as np

from lna.core.errors import LnaError
from lna.identification import neurons
from lna.storage.counts import CountStore
from lna.storage.store import open_store


class NeuronSets(neurons.NeuronSets):
    """Neuron sets: `.sets[lang]` (every selected neuron above tau for lang, per layer),
    `.general` (above tau for every language), `.languages`, `.layers`, `.neurons`, `.tau`,
    `.lam`, `.method`; `.specific(lang)`, `.shared(*langs)`, `.sizes()`, `.save(path)`,
    `.to_pt()`."""

    @classmethod
    def of(cls, ns: neurons.NeuronSets) -> "NeuronSets":
        new = cls.__new__(cls)
        new.__dict__.update({f.name: getattr(ns, f.name) for f in fields(neurons.NeuronSets)})
        return new

    @classmethod
    def load(cls, path) -> "NeuronSets":
        """Read lna-identify's JSON (validated)."""
        return cls.of(neurons.load(path))

    def _lang(self, lang: str) -> str:
        if lang not in self.languages:
            raise LnaError(f"the neuron sets have no {lang!r}: they have {', '.join(self.languages)}")
        return lang

    def specific(self, lang: str) -> list[np.ndarray]:
        """Per layer, the neurons of `lang` that no other language lists (N = 1)."""
        return self.split("specific")[self._lang(lang)]

    def shared(self, *langs: str) -> list[np.ndarray]:
        """Per layer, the neurons listed under every one of `langs` (two or more); with no
        languages, every neuron listed under more than one language (the related ones)."""
        if len(langs) == 1:
            raise LnaError("shared() takes two or more languages (or none); specific(lang) gives one's own")
        if not langs:
            return [idx[n > 1] for idx, n in self.shared_by()]
        out = []
        for layer in range(self.layers):
            common = self.sets[self._lang(langs[0])][layer]
            for lang in langs[1:]:
                common = np.intersect1d(common, self.sets[self._lang(lang)][layer], assume_unique=True)
            out.append(common)
        return out

    def save(self, path) -> Path:
        """Write lna-identify's JSON atomically."""
        return neurons.save(self, path)

    def to_pt(self, path=None, *, kind: str = "all"):
        """The released mask layout (list over languages of list over layers of LongTensor):
        written to `path` (returns the path), or returned where no path is given. kind "all"
        (the sets) or "specific" (N = 1 only)."""
        if kind not in ("all", "specific"):
            raise LnaError(f"unknown kind {kind!r}: use all or specific")
        if path is not None:
            return neurons.export_pt(self, path, kind=kind)
        import torch

        sets = self.sets if kind == "all" else self.split(kind)
        return [[torch.as_tensor(a, dtype=torch.long) for a in sets[lang]] for lang in self.languages]

    def __repr__(self) -> str:
        lam = "-" if self.lam is None else f"{self.lam:g}" + (" (auto)" if self.lambda_auto else "")
        sizes = self.sizes()
        langs = ", ".join(f"{lang} {s['all']} ({s['specific']} specific)" for lang, s in sizes.items())
        model = self.source.get("model_name") or self.source.get("model") or "unknown model"
        return (f"<lna.NeuronSets: {model}; {self.method}, lambda {lam}, tau {self.tau:.4g} "
                f"({self.tau_quantile:g} quantile), top rate {self.top_rate:g} of {self.layers} layers x "
                f"{self.neurons} neurons; {sum(len(g) for g in self.general)} general>\n  {langs}")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(lang)}</td><td>{s['all']}</td><td>{s['specific']}</td>"
                       f"<td>{s['related']}</td></tr>" for lang, s in self.sizes().items())
        head = html.escape(repr(self).splitlines()[0])
        return (f"<p>{head}</p><table><tr><th>language</th><th>neurons</th><th>specific</th><th>related</th></tr>"
                f"{rows}</table>")


def identify(store, *, method: str = "ternary", top_rate: float = 0.01, tau_quantile: float = 0.95, lam="auto",
             langs=None, allow_partial: bool = False) -> NeuronSets:
    """lna-identify from Python (lna.identification.identify.identify_store, as the CLI):
    `store` a path or a Store/CountStore; `lam` a number or "auto"; `langs` a subset of the
    store's languages (codes, or "en,zh")."""
    from lna.identification.identify import identify_store

    source = {}
    if not isinstance(store, CountStore):
        source = {"store": str(store)}
        store = open_store(store, allow_partial=allow_partial, sums=False)
    else:
        if getattr(store, "path", None) is not None:
            source = {"store": str(store.path)}
        if not store.complete and not allow_partial:
            where = f"{store.path}: " if source else ""
            raise LnaError(f"{where}unfinished profile; rerun the same lna-profile command to finish it "
                           "(or pass allow_partial=True)")
    ns = identify_store(store, source=source, method=method, top_rate=top_rate, tau_quantile=tau_quantile,
                        lam=lam, langs=langs)
    return NeuronSets.of(ns)

"""`lna.profile` and `lna.open`: a count store as a Python object (`Store`).

`Store` is lna.storage.counts.CountStore (read and written by lna.storage.store, the one
reader and writer of stores) with what a notebook wants on top: where it lives, a labelled
xarray view, and a useful repr.
"""
from __future__ import annotations

import html
from dataclasses import fields
from pathlib import Path

import numpy as np

from lna.core.errors import LnaError
from lna.storage.counts import CountStore
from lna.storage.store import open_store, save_store


class Store(CountStore):
    """A count store: `.counts` int64 [layer, language, neuron], `.tokens` int64 [language],
    `.languages`, `.meta` (model and its identity, dtype, template, counted_during, ...),
    `.probabilities()`, `.to_xarray()`, `.save(path)`; `.path` where it was read or written."""

    path: Path | None = None

    @classmethod
    def of(cls, store: CountStore, path=None) -> "Store":
        """The same arrays and records as `store`, as a Store (no copy)."""
        new = cls.__new__(cls)
        new.__dict__.update({f.name: getattr(store, f.name) for f in fields(CountStore)})
        new.path = None if path is None else Path(path)
        return new

    @property
    def model(self) -> str | None:
        return self.meta.get("model_name") or self.meta.get("model")

    def save(self, path) -> "Store":
        """Write the store to `path` atomically (as lna-profile does); returns self."""
        save_store(self, path)
        self.path = Path(path)
        return self

    def to_xarray(self):
        """An xarray.Dataset with dims layer, language, neuron: counts, probability (counts /
        tokens), tokens, and sums / active_sums where the store has them; attrs: meta.
        Needs xarray (pip install 'lna[xarray]')."""
        xr = _xarray()
        dims = ("layer", "language", "neuron")
        data = {"counts": (dims, self.counts), "probability": (dims, self.probabilities()),
                "tokens": (("language",), self.tokens)}
        if self.has_sums:
            data.update(sums=(dims, self.sums), active_sums=(dims, self.active_sums))
        coords = {"layer": np.arange(self.layers), "language": list(self.languages), "neuron": np.arange(self.neurons)}
        attrs = {k: v for k, v in self.meta.items() if isinstance(v, (str, int, float))}
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def __repr__(self) -> str:
        where = f" {self.path}" if self.path else ""
        parts = [f"{self.model or 'unknown model'}",
                 f"{self.layers} layers x {len(self.languages)} languages x {self.neurons} neurons",
                 f"{int(self.tokens.sum()):,} response tokens"]
        for key, label in (("dtype", ""), ("template", "template "), ("counted_during", "counted during ")):
            if self.meta.get(key):
                parts.append(f"{label}{self.meta[key]}")
        if self.has_sums:
            parts.append("with activation sums")
        if not self.complete:
            parts.append("UNFINISHED")
        langs = ", ".join(f"{lang} {int(n):,}" for lang, n in zip(self.languages, self.tokens))
        return f"<lna.Store{where}: {'; '.join(parts)}>\n  tokens: {langs}"

    def _repr_html_(self) -> str:
        p = self.probabilities()
        rows = "".join(f"<tr><td>{html.escape(lang)}</td><td>{int(self.tokens[k]):,}</td>"
                       f"<td>{p[:, k].mean():.4f}</td><td>{int((self.counts[:, k] > 0).sum()):,}</td></tr>"
                       for k, lang in enumerate(self.languages))
        head = html.escape(repr(self).splitlines()[0])
        return (f"<p>{head}</p><table><tr><th>language</th><th>tokens</th><th>mean P(fire)</th>"
                f"<th>neurons that fired</th></tr>{rows}</table>")


def open(path, *, allow_partial: bool = True, sums: bool = True) -> Store:  # noqa: A001 - lna.open
    """Read a count store (verified against its integrity record, as every lna command does)."""
    return Store.of(open_store(path, allow_partial=allow_partial, sums=sums), path)


def profile(model: str, dataset: str = "mgsm", *, langs="all", out=None, progress: bool = True,
            **options) -> Store:
    """lna-profile from Python: the same run (lna.profiling.profile.run), resumable the same
    way; returns the store written. `options`: lna-profile's, as Python names (samples,
    temperature, top_p, max_new_tokens, seed, limit, template, dtype, device, backend,
    responses, shard, sums, force_decode, token_budget, checkpoint_every, revision)."""
    from lna.profiling.profile import Options, run

    opts = _options(Options, "lna.profile", model=model, dataset=str(dataset), langs=_codes(langs),
                    out=None if out is None else str(out), progress=progress, **options)
    return open(run(opts))


def _options(cls, what: str, **kwargs):
    known = {f.name for f in fields(cls)} - {"report"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise LnaError(f"{what}: unknown option {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
    return cls(**kwargs)


def _codes(langs):
    """A list of codes as the CLIs' comma-separated text; None and text as they are."""
    return langs if langs is None or isinstance(langs, str) else ",".join(langs)


def _xarray():
    try:
        import xarray
    except ImportError:
        raise LnaError("this needs xarray: pip install 'lna[xarray]'") from None
    return xarray

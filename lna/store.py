"""The count store: activation counts as an open zarr v3 group (design.md, "Count store").

Layout (readable with plain zarr, and with xarray through `dimension_names`):
    counts   int64 [layer, language, neuron]  response tokens on which the neuron fired
    tokens   int64 [language]                 response tokens counted
    language str   [language]                 coordinate: language codes, in store order
    layer, neuron  int64                      coordinates: 0..layers-1, 0..neurons-1
    attrs: format, languages, model, architecture, layers, neurons, counted, ... and
           `samples`, the manifest of processed samples (resume and merge bookkeeping).

A store is small (32 x 10 x 14336 int64 is 37 MB before compression), so it is read
whole and always rewritten whole, atomically: a half-written store never exists.
"""
import base64
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lna._version import __version__
from lna.errors import LnaError

FORMAT = "lna-counts/1"
DIMS = ("layer", "language", "neuron")
# What a count means; stores that differ here must never be summed.
IDENTITY = ("counted", "activation", "layers", "neurons")


@dataclass
class CountStore:
    counts: np.ndarray  # int64 [layer, language, neuron]
    tokens: np.ndarray  # int64 [language]
    languages: list[str]
    meta: dict = field(default_factory=dict)
    # lang -> list of manifest parts {"source": str, "total": int | None, "done": "all" | b64}
    samples: dict = field(default_factory=dict)
    complete: bool = True

    def __post_init__(self):
        self.counts = np.ascontiguousarray(self.counts, dtype=np.int64)
        self.tokens = np.ascontiguousarray(self.tokens, dtype=np.int64)
        self.languages = list(self.languages)
        self.meta = dict(self.meta)
        self.meta.setdefault("counted", "response-tokens")
        self.meta.setdefault("activation", "silu(gate)>0")
        self.meta["layers"], self.meta["neurons"] = self.layers, self.neurons
        validate(self)

    @property
    def layers(self) -> int:
        return self.counts.shape[0]

    @property
    def neurons(self) -> int:
        return self.counts.shape[2]

    @classmethod
    def empty(cls, languages, layers, neurons, meta=None) -> "CountStore":
        k = len(languages)
        return cls(np.zeros((layers, k, neurons), np.int64), np.zeros(k, np.int64), languages, meta or {})

    def index(self, lang: str) -> int:
        if lang not in self.languages:
            raise LnaError(f"the store has no language {lang!r}: it has {', '.join(self.languages)}")
        return self.languages.index(lang)

    def probabilities(self) -> np.ndarray:
        """p[layer, language, neuron] = counts / tokens (float64; 0 where nothing was counted)."""
        return self.counts / np.maximum(self.tokens, 1)[None, :, None]

    def select(self, langs) -> "CountStore":
        idx = [self.index(lang) for lang in langs]
        samples = {lang: self.samples[lang] for lang in langs if lang in self.samples}
        return replace(self, counts=self.counts[:, idx], tokens=self.tokens[idx], languages=list(langs), samples=samples)

    def with_language(self, lang: str) -> "CountStore":
        """This store with `lang` added (zero counts) if it is not there yet."""
        if lang in self.languages:
            return self
        zeros = np.zeros((self.layers, 1, self.neurons), np.int64)
        return replace(self, counts=np.concatenate([self.counts, zeros], axis=1),
                       tokens=np.append(self.tokens, 0), languages=self.languages + [lang])

    # -- manifest of processed samples ----------------------------------------------
    def done_mask(self, lang: str, source: str, total: int) -> np.ndarray:
        """Which of the `total` samples of `source` are already counted for `lang`."""
        for part in self.samples.get(lang, []):
            if part["source"] == source:
                if part["total"] != total:
                    raise LnaError(
                        f"the store counted {lang} samples of {source} out of {part['total']}, now "
                        f"there are {total}: the data changed; profile into a new store"
                    )
                return _decode_done(part, total)
        return np.zeros(total, bool)

    def mark_done(self, lang: str, source: str, total: int, done: np.ndarray) -> None:
        parts = [p for p in self.samples.get(lang, []) if p["source"] != source]
        parts.append({"source": source, "total": int(total), "done": _encode_done(done)})
        self.samples[lang] = parts


def _encode_done(done: np.ndarray) -> str:
    done = np.asarray(done, bool)
    if done.all():
        return "all"
    return base64.b64encode(np.packbits(done).tobytes()).decode()


def _decode_done(part: dict, total: int | None = None) -> np.ndarray:
    total = part["total"] if total is None else total
    if total is None:  # imported: sample list unknown, counted as a whole
        return np.ones(1, bool)
    if part["done"] == "all":
        return np.ones(total, bool)
    bits = np.unpackbits(np.frombuffer(base64.b64decode(part["done"]), np.uint8))
    return bits[:total].astype(bool)


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


# -- reading and writing ----------------------------------------------------------------
def _previous(path: Path) -> Path:
    return path.parent / f".{path.name}.previous"


def is_store(path) -> bool:
    path = Path(path)
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def open_store(path, *, allow_partial: bool = True) -> CountStore:
    """Read a store; a clear LnaError for anything that is not one."""
    import zarr

    path = Path(path)
    if not path.exists() and _previous(path).exists():
        _previous(path).rename(path)  # a swap was interrupted between its two renames
    if not path.exists():
        raise LnaError(f"{path}: no such count store (create one with lna-profile or lna import-counts)")
    if not is_store(path):
        raise LnaError(f"{path}: not an lna count store (expected a zarr v3 group with format {FORMAT})")
    try:
        root = zarr.open_group(str(path), mode="r", use_consolidated=False)
        attrs = dict(root.attrs)
        counts = np.asarray(root["counts"][...])
        tokens = np.asarray(root["tokens"][...])
        languages = attrs["languages"]
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise LnaError(f"{path}: damaged count store (missing or unreadable {err}); recreate it") from None
    store = CountStore(counts, tokens, languages, attrs.get("meta", {}),
                       attrs.get("samples", {}), attrs.get("complete", True))
    if not allow_partial and not store.complete:
        raise LnaError(f"{path}: unfinished profile; rerun the same lna-profile command to finish it")
    return store


def save_store(store: CountStore, path) -> Path:
    """Write `store` to `path` atomically (a fresh group, then a rename swap)."""
    import zarr
    from zarr.codecs import BloscCodec

    path = Path(path)
    if path.exists() and not is_store(path):
        raise LnaError(f"{path}: exists and is not an lna count store; choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        codec = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
        L, K, neurons = store.counts.shape
        arr = root.create_array("counts", shape=store.counts.shape, dtype="int64",
                                chunks=(L, 1, neurons), compressors=codec, dimension_names=DIMS)
        arr[...] = store.counts
        root.create_array("tokens", shape=(K,), dtype="int64", dimension_names=("language",))[...] = store.tokens
        root.create_array("language", shape=(K,), dtype=str, dimension_names=("language",))[...] = np.array(
            store.languages, dtype=object)
        root.create_array("layer", shape=(L,), dtype="int64", dimension_names=("layer",))[...] = np.arange(L)
        root.create_array("neuron", shape=(neurons,), dtype="int64", compressors=codec,
                          dimension_names=("neuron",))[...] = np.arange(neurons)
        root.attrs.update({
            "format": FORMAT,
            "lna_version": __version__,
            "languages": store.languages,
            "complete": bool(store.complete),
            "meta": store.meta,
            "samples": store.samples,
        })
        _swap(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _swap(new: Path, path: Path) -> None:
    prev = _previous(path)
    shutil.rmtree(prev, ignore_errors=True)
    if path.exists():
        path.rename(prev)
    new.rename(path)
    shutil.rmtree(prev, ignore_errors=True)


# -- merging ------------------------------------------------------------------------------
def check_compatible(a: CountStore, b: CountStore, what: str = "stores") -> None:
    for key in IDENTITY:
        if a.meta.get(key) != b.meta.get(key):
            raise LnaError(f"cannot combine {what}: {key} differs ({a.meta.get(key)!r} vs {b.meta.get(key)!r})")
    fa, fb = a.meta.get("model_fingerprint"), b.meta.get("model_fingerprint")
    same_model = fa == fb if fa and fb else a.meta.get("model") == b.meta.get("model")
    if not same_model:
        raise LnaError(
            f"cannot combine {what}: they are from different models "
            f"({a.meta.get('model')!r} vs {b.meta.get('model')!r})"
        )


def merge(stores: list[CountStore]) -> CountStore:
    """Sum stores of the same model (shards, extra languages); refuse double counting."""
    if not stores:
        raise LnaError("nothing to merge")
    out = stores[0]
    out = replace(out, counts=out.counts.copy(), tokens=out.tokens.copy(),
                  samples=json.loads(json.dumps(out.samples)))
    for other in stores[1:]:
        check_compatible(out, other)
        for lang in other.languages:
            out = out.with_language(lang)
            k, j = out.index(lang), other.index(lang)
            out.samples[lang] = _merge_parts(lang, out.samples.get(lang, []), other.samples.get(lang, []))
            out.counts[:, k] += other.counts[:, j]
            out.tokens[k] += other.tokens[j]
        out.complete = out.complete and other.complete
        # Imported counts are not exact (two-pass differences): the sum is not either.
        if "import" in (out.meta.get("provenance"), other.meta.get("provenance")):
            out.meta["provenance"] = "import"
        for key in ("dataset", "backend", "dtype"):
            values = [v for v in (out.meta.get(key), other.meta.get(key)) if v]
            if values and values[0] != values[-1]:
                out.meta[key] = f"{values[0]}+{values[-1]}"
    validate(out)
    return out


def _merge_parts(lang: str, mine: list, theirs: list) -> list:
    parts = {p["source"]: p for p in mine}
    for p in theirs:
        q = parts.get(p["source"])
        if q is None:
            parts[p["source"]] = p
            continue
        a, b = _decode_done(q), _decode_done(p)
        if a.shape != b.shape or (a & b).any():
            raise LnaError(
                f"cannot merge: both stores counted the same {lang} samples of {p['source']} "
                "(summing would count them twice)"
            )
        parts[p["source"]] = {"source": p["source"], "total": p["total"], "done": _encode_done(a | b)}
    return list(parts.values())

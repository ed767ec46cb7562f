"""What a count store must contain, recorded when it is written and verified on every open.

The record (attrs["integrity"], written in the same atomic swap as the data):
    {"checksum": "crc32",
     "counts":  {lang: CRC-32 of counts[:, k, :] as little-endian int64, C order},
     "sums", "active_sums": {lang: CRC-32 of that language's slice as little-endian float64}
                (only in stores that have the activation sums),
     "tokens":  {lang: response tokens},
     "samples": {lang: {"n": samples, "crc32": CRC-32 of their ids (little-endian uint64)}},
     "sample_keys": CRC-32 of the sample_keys bytes}
plus the languages (attrs) that the `language` coordinate must repeat, and layers x neurons
(attrs["meta"]) that fix the shapes and the `layer` / `neuron` coordinates.

Why a per-language CRC-32 of the decoded values: zarr returns the fill value for an absent
chunk, so only a record of the values catches a missing chunk (a language silently zeroed);
one value per language names the language that is damaged; decoded values also catch a
chunk swapped in from another store, which a checksum codec inside each chunk (zarr's
crc32c) would not. zlib's CRC-32 needs nothing beyond the standard library; all checks
add ~30 ms to the ~75 ms plain open of a 32 x 14336 x 10 store on one core (CRC-32 of the
counts ~10 ms; benches/results/store_integrity_cpu.json). It detects accidental damage
(a random alteration escapes with probability 2**-32), not deliberate forgery, which a
store on the user's own disk does not need to resist.
"""
import itertools
import zlib
from pathlib import Path

import numpy as np

from lna.core.errors import LnaError, first_line

RECREATE = "re-run lna-profile (or lna import-counts) to recreate it"


def lang_crc(counts: np.ndarray, k: int) -> int:
    """CRC-32 of counts[:, k, :] as little-endian int64 (float64 for the sum tables) in C
    order, one contiguous row at a time (a strided slice would need a copy)."""
    crc = 0
    for layer in counts.astype("<f8" if counts.dtype.kind == "f" else "<i8", copy=False):
        crc = zlib.crc32(layer[k], crc)
    return crc


def record(store, keys: bytes) -> dict:
    """The record of `store` (samples in the order and form they are written; `keys`: the
    sample_keys bytes)."""
    from lna.storage.manifest import ids_crc

    return {
        "checksum": "crc32",
        "counts": {lang: lang_crc(store.counts, k) for k, lang in enumerate(store.languages)},
        "tokens": {lang: int(n) for lang, n in zip(store.languages, store.tokens)},
        "samples": {lang: {"n": len(c.ids), "crc32": ids_crc(c.ids)} for lang, c in store.samples.items()
                    if len(c.ids)},
        "sample_keys": zlib.crc32(keys),
        **{name: {lang: lang_crc(getattr(store, name), k) for k, lang in enumerate(store.languages)}
           for name in ("sums", "active_sums") if getattr(store, name, None) is not None},
        **{name: {lang: expert_crc(getattr(store, name), k) for k, lang in enumerate(store.languages)}
           for name in EXPERT_TABLES if getattr(store, name, None) is not None},
    }


# Mixture-of-experts stores: [layer, expert, language(, neuron)], one record entry per language.
EXPERT_TABLES = ("expert_counts", "routed")


def expert_crc(table: np.ndarray, k: int) -> int:
    """CRC-32 of table[:, :, k] as little-endian int64, C order."""
    return zlib.crc32(np.ascontiguousarray(table[:, :, k], dtype="<i8"))


def verify_experts(reader: "Reader", rec: dict, tables: dict, experts, width) -> None:
    """The expert tables against the record: present in it, shaped by meta, values by
    language; and the `expert` coordinate."""
    langs = reader.languages
    for name, table in tables.items():
        if not isinstance(rec.get(name), dict):
            reader.fail(name, "present but not in the store's integrity record")
        want = (table.shape[0], experts, len(langs), width)[:table.ndim]
        if table.shape != want:
            reader.fail(name, f"shape {table.shape}, the store's record says {want}")
        for k, lang in enumerate(langs):
            if expert_crc(table, k) != rec[name].get(lang):
                gone = reader.missing(name, k, axis=2)
                reader.fail(name, f"chunk missing ({_rel(reader, gone[0])})" if gone
                            else "values differ from the store's checksum (chunk altered)", lang)
    got = reader.read("expert")
    if got.shape != (experts,) or (got != np.arange(experts)).any():
        reader.fail("expert", "coordinate values differ from the store's record")


class Reader:
    """Reads a store's arrays, turning every failure into one line naming the store, the
    array and (where the array has one chunk per language) the language."""

    def __init__(self, path: Path, root, languages: list):
        self.path, self.root, self.languages = path, root, languages

    def fail(self, array: str, what: str, lang: str | None = None):
        where = f"array {array}" + (f", language {lang}" if lang else "")
        raise LnaError(f"{self.path}: damaged count store: {where}: {what}; {RECREATE}")

    def array(self, name: str):
        try:
            return self.root[name]
        except KeyError:
            self.fail(name, "missing (no zarr.json)")
        except Exception as err:  # noqa: BLE001 - a damaged zarr.json fails in many ways
            self.fail(name, f"unreadable metadata ({first_line(err, 100)})")

    def read(self, name: str, by_language: bool = False) -> np.ndarray:
        arr = self.array(name)
        try:
            return np.asarray(arr[...])
        except Exception as err:  # noqa: BLE001 - decoders raise anything (RuntimeError from blosc, ...)
            if by_language:
                for k, lang in enumerate(self.languages):
                    try:
                        arr[:, k, :]
                    except Exception as lang_err:  # noqa: BLE001
                        self.fail(name, f"chunk unreadable, truncated or corrupted ({first_line(lang_err, 100)})", lang)
            self.fail(name, f"unreadable, truncated or corrupted ({first_line(err, 100)})")

    def chunk_files(self, name: str, k: int | None = None, axis: int = 1) -> list:
        """The chunk files of array `name` (those holding language k of an array whose
        languages are on `axis`), missing ones included."""
        arr = self.array(name)
        grid = [range(-(-n // c)) for n, c in zip(arr.shape, arr.chunks)]
        if k is not None:
            grid[axis] = [k // arr.chunks[axis]]
        return [self.path / name / arr.metadata.encode_chunk_key(tuple(c)) for c in itertools.product(*grid)]

    def missing(self, name: str, k: int | None = None, axis: int = 1) -> list:
        return [f for f in self.chunk_files(name, k, axis) if not f.is_file()]


def verify(reader: Reader, rec: dict, counts, tokens, layers: int, neurons: int, samples: dict,
           keys: bytes, sums: dict | None = None, unread: tuple = ()) -> None:
    """Everything the record promises; the first difference is the error. `sums`: the
    activation sum tables read ({name: array}) for the names the record has; `unread`: the
    names the caller chose not to read (not verified, not "extra")."""
    langs = reader.languages
    if not all(isinstance(rec.get(key), dict) for key in ("counts", "tokens", "samples")):
        raise LnaError(f"{reader.path}: damaged count store: its integrity record is incomplete; {RECREATE}")
    tables = {"counts": counts, **(sums or {})}
    if not all(isinstance(rec.get(name), dict) for name in tables):
        raise LnaError(f"{reader.path}: damaged count store: its integrity record is incomplete; {RECREATE}")
    if ("sums" in tables) != ("active_sums" in tables):
        reader.fail("sums", "the record lists one of sums and active_sums without the other")
    extra = [name for name in ("sums", "active_sums")
             if name not in tables and name not in unread and _exists(reader, name)]
    if extra:  # arrays the record does not cover: written by something other than lna
        reader.fail(extra[0], "present but not in the store's integrity record")
    for name, table in tables.items():
        if table.shape != (layers, len(langs), neurons):
            reader.fail(name, f"shape {table.shape}, the store's record says {(layers, len(langs), neurons)}")
        for k, lang in enumerate(langs):
            if lang_crc(table, k) != rec[name].get(lang):
                gone = reader.missing(name, k)
                reader.fail(name, f"chunk missing ({_rel(reader, gone[0])})" if gone
                            else "values differ from the store's checksum (chunk altered)", lang)
    want = np.array([rec["tokens"].get(lang, -1) for lang in langs])
    if tokens.shape != want.shape or (tokens != want).any():
        if tokens.shape != want.shape:
            reader.fail("tokens", f"shape {tokens.shape}, the store's record says {want.shape}")
        bad = [lang for k, lang in enumerate(langs) if tokens[k] != want[k]]
        gone = reader.missing("tokens")
        got = f"chunk missing ({_rel(reader, gone[0])})" if gone else "values differ from the store's record (chunk altered)"
        reader.fail("tokens", got, bad[0] + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    coords = {"language": np.array(langs, dtype=object), "layer": np.arange(layers), "neuron": np.arange(neurons)}
    for name, expect in coords.items():
        got = reader.read(name)
        if got.shape != expect.shape or (got != expect).any():
            reader.fail(name, "coordinate values differ from the store's record")
    from lna.storage.manifest import ids_crc

    want_samples = rec.get("samples", {})
    for lang in sorted(set(want_samples) | {lang for lang, c in samples.items() if len(c.ids)}):
        c, w = samples.get(lang), want_samples.get(lang, {})
        if c is None or len(c.ids) != w.get("n") or ids_crc(c.ids) != w.get("crc32"):
            reader.fail("sample_id", "sample manifest differs from the store's record", lang)
    if zlib.crc32(keys) != rec.get("sample_keys"):
        reader.fail("sample_keys", "values differ from the store's checksum (chunk altered)")


def _exists(reader: Reader, name: str) -> bool:
    return (reader.path / name / "zarr.json").exists()


def check_legacy(reader: Reader, counts, tokens) -> None:
    """A store of lna-counts/1 has no record; chunk files can still be checked. Its writer
    skipped chunks equal to the fill value, so a language's counts chunk may be absent only
    where it counted no token (a language that counted tokens always has some neuron above 0)."""
    if counts.any() and reader.missing("tokens"):
        reader.fail("tokens", f"chunk missing ({_rel(reader, reader.missing('tokens')[0])})")
    for k, lang in enumerate(reader.languages):
        if tokens[k] > 0:
            gone = reader.missing("counts", k)
            if gone:
                reader.fail("counts", f"chunk missing ({_rel(reader, gone[0])})", lang)


def _rel(reader: Reader, f: Path) -> str:
    return str(f.relative_to(reader.path))

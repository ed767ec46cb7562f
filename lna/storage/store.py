"""The count store: activation counts as an open zarr v3 group (docs/design.md, "Count store").

Layout (readable with plain zarr, and with xarray through `dimension_names`):
    counts          int64  [layer, language, neuron]  response tokens on which the neuron fired
    tokens          int64  [language]                 response tokens counted
    sums            float64 [layer, language, neuron] optional: sum of act(gate) over those tokens
    active_sums     float64 [layer, language, neuron] optional: the same over tokens with gate > 0
                                                      (both or neither; NaN: a language whose sums
                                                      are unknown, e.g. merged with counts without)
    language        str    [language]                 coordinate: language codes, in store order
    layer, neuron   int64                             coordinates: 0..layers-1, 0..neurons-1
    sample_id       uint64 [sample]                   content ids of the counted samples (lna.storage.manifest),
                                                      by language in store order, then by id
    sample_keys     uint8  [byte]                     their keys in the data, utf-8, one a line
                                                      (for messages; one blob reads faster than strings)
    mixture-of-experts stores (format lna-counts/3; docs/moe.md) add
    expert_counts   int64  [layer, expert, language, neuron]  routed response tokens on which the
                                                      expert's neuron fired
    routed          int64  [layer, expert, language]  response tokens routed to the expert
    expert          int64                             coordinate: 0..experts-1
                    and `counts` holds each layer's always-on MLP (shared expert or dense
                    MLP), padded with zeros to the widest (meta always_on: each layer's width)
    attrs: format, lna_version, languages, complete, meta (model and its identity, dtype,
           backend, dataset, template, what was counted, ...), sample_counts (samples per
           language, in sample_id's order), unknown_samples (counts whose samples are not
           known: imports) and integrity (lna.storage.integrity), checked on every open.

A store is small (32 x 10 x 14336 int64 is 37 MB before compression), so it is read
whole and always rewritten whole, atomically: zarr encodes it in memory, lna writes the
files into a hidden folder beside the target with plain synchronous writes (no zarr writer
thread can outlive a failure and recreate the folder), then swaps it in with two renames.
A half-written store never exists; a failed write leaves the previous one unchanged.
"""
import errno
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from lna.storage import integrity
from lna._version import __version__
from lna.core.atomic import output_path
from lna.core.errors import LnaError, first_line, note
from lna.storage.counts import SUMS, CountStore
from lna.storage.manifest import Counted, keys_blob

FORMAT = "lna-counts/2"
# Stores of lna 0.1: no integrity record, samples recorded by position. They still open:
# refusing them would throw away profiles that took GPU hours and are almost surely intact,
# while what went wrong with them in practice is still caught (a missing chunk by its absent
# file, a truncated or corrupted one when it is decoded); only a chunk altered into another
# valid one slips through, which is what the note says.
LEGACY_FORMAT = "lna-counts/1"
# Stores with an expert dimension; dense stores keep lna-counts/2, so older lna still reads them.
EXPERT_FORMAT = "lna-counts/3"
FORMATS = (FORMAT, EXPERT_FORMAT, LEGACY_FORMAT)
EXPERT_DIMS = ("layer", "expert", "language", "neuron")
DIMS = ("layer", "language", "neuron")
# -- reading --------------------------------------------------------------------------------
def _previous(path: Path) -> Path:
    return path.parent / f".{path.name}.previous"


def _attributes(path: Path) -> dict | None:
    """The group's attributes if `path` is an lna count store, else None; a store whose
    zarr.json is unreadable is an error, not "something else"."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError) as err:
        if (path / "counts").is_dir():
            raise LnaError(f"{path}: damaged count store: zarr.json is unreadable "
                           f"({first_line(err, 100)}); {integrity.RECREATE}") from None
        return None
    return attrs if isinstance(attrs, dict) and attrs.get("format") in FORMATS else None


def is_store(path) -> bool:
    try:
        return _attributes(Path(path)) is not None
    except LnaError:
        return True  # a damaged store is still a store (never overwritten as "something else")


def open_store(path, *, allow_partial: bool = True, sums: bool = True) -> CountStore:
    """Read a store and verify it against its integrity record; a clear one-line LnaError
    for anything that is not a store, or a damaged one. sums=False leaves the activation
    sums unread (6x the counts on disk; identification and reports never use them)."""
    import zarr

    path = Path(path)
    if not path.exists() and _previous(path).exists():
        _previous(path).rename(path)  # a swap was interrupted between its two renames
    if not path.exists():
        raise LnaError(f"{path}: no such count store (create one with lna-profile or lna import-counts)")
    attrs = _attributes(path)
    if attrs is None:
        raise LnaError(f"{path}: not an lna count store (expected a zarr v3 group with format {FORMAT})")
    languages, meta = attrs.get("languages"), attrs.get("meta", {})
    if not isinstance(languages, list) or not isinstance(meta, dict):
        raise LnaError(f"{path}: damaged count store: attributes lack the languages or meta; {integrity.RECREATE}")
    try:
        root = zarr.open_group(str(path), mode="r", use_consolidated=False)
    except Exception as err:  # noqa: BLE001 - zarr raises many kinds for a damaged group
        raise LnaError(f"{path}: damaged count store ({first_line(err, 100)}); {integrity.RECREATE}") from None
    reader = integrity.Reader(path, root, languages)
    counts = reader.read("counts", by_language=True)
    tokens = reader.read("tokens")
    if attrs["format"] == LEGACY_FORMAT:
        sums = {}
        integrity.check_legacy(reader, counts, tokens)
        parts = attrs.get("samples") if isinstance(attrs.get("samples"), dict) else {}
        samples = {lang: Counted(unknown=list(p)) for lang, p in parts.items()}
        note(f"{path} was written by an older lna ({LEGACY_FORMAT}): it has no checksums (missing and "
             "unreadable chunks are detected, altered ones are not) and the older, weaker model identity; "
             "re-run lna-profile or lna import-counts to get both")
    else:
        record = attrs.get("integrity")
        if not isinstance(record, dict):
            raise LnaError(f"{path}: damaged count store: its integrity record is missing; {integrity.RECREATE}")
        samples, keys = _read_samples(reader, attrs)
        # Stores written before activation sums existed have neither the arrays nor their record.
        present = [name for name in SUMS if name in record]
        tables = {name: reader.read(name, by_language=True) for name in present} if sums else {}
        integrity.verify(reader, record, counts, tokens, meta.get("layers"), meta.get("neurons"), samples, keys,
                         tables, unread=() if sums else tuple(present))
        sums = tables
        if "expert_counts" in record or _exists(path, "expert_counts"):
            tables = {name: reader.read(name) for name in integrity.EXPERT_TABLES}
            integrity.verify_experts(reader, record, tables, meta.get("experts"), meta.get("expert_neurons"))
            sums = {**sums, **tables}
    try:
        store = CountStore(counts, tokens, languages, meta, samples, attrs.get("complete", True), **sums)
    except LnaError as err:
        raise LnaError(f"{path}: {err}") from None
    if not allow_partial and not store.complete:
        raise LnaError(f"{path}: unfinished profile; rerun the same lna-profile command to finish it")
    return store


def _read_samples(reader: integrity.Reader, attrs: dict) -> tuple:
    """(lang -> Counted, the sample_keys bytes as read)."""
    ids = reader.read("sample_id")
    raw = reader.read("sample_keys").tobytes()
    keys = raw.decode("utf-8", errors="replace").split("\n") if len(ids) else []
    sizes = attrs.get("sample_counts", {})
    if not (isinstance(sizes, dict) and all(isinstance(n, int) for n in sizes.values())
            and sum(sizes.values()) == len(ids) == len(keys)):
        reader.fail("sample_id", f"{len(ids)} ids and {len(keys)} keys do not match sample_counts {sizes}")
    samples, start = {}, 0
    for lang, n in sizes.items():
        samples[lang] = Counted(ids[start:start + n], keys[start:start + n])
        start += n
    for lang, parts in attrs.get("unknown_samples", {}).items():
        samples.setdefault(lang, Counted()).unknown = list(parts)
    return samples, raw


# -- writing --------------------------------------------------------------------------------
def save_store(store: CountStore, path) -> Path:
    """Write `store` to `path` atomically; any OSError (a full disk, no permission) becomes
    one line and leaves the previous store, if any, unchanged and no temporary behind. A
    symlink is written through to its target (lna.core.atomic.output_path)."""
    given, path = Path(path), output_path(path)
    if path.exists() and not is_store(path):
        raise LnaError(f"{given}: exists and is not an lna count store; choose another output path")
    files = _encode(store)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        _write_files(tmp, files)
        _swap(tmp, path)
    except OSError as err:
        raise LnaError(_write_error(given, err)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale(path)
    return given


def _encode(store: CountStore) -> dict:
    """The store's files (relative path -> bytes), encoded by zarr in memory."""
    import zarr
    from zarr.codecs import BloscCodec
    from zarr.storage import MemoryStore

    buffers: dict = {}
    root = zarr.open_group(MemoryStore(buffers), mode="w", zarr_format=3)
    codec = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
    # Every chunk is written, zeros included: a missing chunk file is then always damage.
    full = {"write_empty_chunks": True}

    def array(name, values, dims, **kw):
        root.create_array(name, shape=values.shape, dtype=kw.pop("dtype", values.dtype), dimension_names=dims,
                          config=full, **kw)[...] = values

    L, K, neurons = store.counts.shape
    # zarr needs chunks of at least one element (a MoE model without always-on MLPs: 0 neurons)
    array("counts", store.counts, DIMS, chunks=(L, 1, max(neurons, 1)), compressors=codec)
    if store.has_experts:
        E, width = store.expert_counts.shape[1], store.expert_counts.shape[3]
        array("expert_counts", store.expert_counts, EXPERT_DIMS, chunks=(L, E, 1, width), compressors=codec)
        array("routed", store.routed, EXPERT_DIMS[:3], chunks=(L, E, 1))
        array("expert", np.arange(E, dtype=np.int64), ("expert",))
    if store.has_sums:
        for name in SUMS:
            array(name, getattr(store, name), DIMS, chunks=(L, 1, neurons), compressors=codec)
    array("tokens", store.tokens, ("language",))
    array("language", np.array(store.languages, dtype=object), ("language",), dtype=str)
    array("layer", np.arange(L, dtype=np.int64), ("layer",))
    array("neuron", np.arange(neurons, dtype=np.int64), ("neuron",), compressors=codec)
    known = {lang: store.samples[lang].sorted() for lang in store.languages
             if lang in store.samples and len(store.samples[lang].ids)}
    kept = replace(store, samples={**store.samples, **known})
    array("sample_id", np.concatenate([c.ids for c in known.values()] or [np.zeros(0, np.uint64)]),
          ("sample",), compressors=codec)
    keys = keys_blob(k for c in known.values() for k in c.keys)
    array("sample_keys", np.frombuffer(keys, np.uint8), ("byte",), compressors=codec)
    root.attrs.update({
        "format": EXPERT_FORMAT if store.has_experts else FORMAT,
        "lna_version": __version__,
        "languages": store.languages,
        "complete": bool(store.complete),
        "meta": store.meta,
        "sample_counts": {lang: len(c.ids) for lang, c in known.items()},
        "unknown_samples": {lang: c.unknown for lang, c in store.samples.items() if c.unknown},
        "integrity": integrity.record(kept, keys),
    })
    return {key: buf.to_bytes() for key, buf in buffers.items()}


def _write_files(root: Path, files: dict) -> None:
    """Plain synchronous writes (fsync'd: the rename that publishes them must not overtake
    their data on a crash)."""
    for key in sorted(files):
        target = root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(files[key])
            fh.flush()
            os.fsync(fh.fileno())


def _swap(new: Path, path: Path) -> None:
    prev = _previous(path)
    shutil.rmtree(prev, ignore_errors=True)
    if path.exists():
        path.rename(prev)
    try:
        new.rename(path)
    except OSError:
        if prev.exists() and not path.exists():
            prev.rename(path)  # put the previous store back
        raise
    shutil.rmtree(prev, ignore_errors=True)


def _write_error(path: Path, err: OSError) -> str:
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno == errno.ENOSPC:
        fix = f"free space on the disk of {path.parent} or write the store elsewhere"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"write the store where you may write ({path.parent} is not writable)"
    else:
        fix = "check that disk, or write the store elsewhere"
    return f"{path}: could not write the count store ({reason}); any previous store there is unchanged; {fix}"


def _remove_stale(path: Path) -> None:
    """Temporary folders of earlier runs that died before cleaning up (killed, or a writer
    that recreated them): removed once their process is gone."""
    prefix = f".{path.name}.tmp-"
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        if p.name.startswith(prefix) and p.name[len(prefix):].isdigit():
            pid = int(p.name[len(prefix):])
            if pid != os.getpid() and not _alive(pid):
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _exists(path: Path, name: str) -> bool:
    return (path / name / "zarr.json").exists()

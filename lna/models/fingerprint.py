"""Model identity: which weights a count store or a neuron set was made with.

    weights-sha256:<32 hex> = sha256(config.json without dtype/version/name fields,
                                     then for each weight file: its name and its sha256)

It is computed from the files on disk, never from loaded tensors, so it is the same for
every backend and every loaded dtype, and it changes when any byte of any weight changes
(a merged LoRA on q_proj/v_proj included). Cost: for a model in the Hugging Face cache it
is free (an LFS blob is named by the sha256 of its content); for a local folder each
weight file is hashed once - sha256 streams ~1.1 GB/s per core on this project's shared
CPU machine, so a 7B model's 14.5 GB take ~13 s on one core, ~4.4 s in its usual three
shards on three free cores (hashed in parallel), plus the disk read where the files are
not in the page cache (benches/results/store_integrity_cpu.json) - and the digest is cached
under the lna cache keyed by (path, size, mtime_ns, ctime_ns, inode), so later runs cost a
stat per file (ctime: a file rewritten and its mtime set back still misses the cache). An
entry that does not check out (its own checksum, the file's stat) is ignored with a note and
the file hashed again: a damaged cache costs a hash, never a wrong identity. The runners
hash while the model loads (`hashing`), on the cores that loading leaves free, from the
page cache that it fills. A sample of each tensor would be cheaper but could miss a change;
the hub cache makes the full hash free where most models live.

`HFRunner.wrap` (a model built in memory) is "unsaved": it never matches anything.
Artefacts of lna 0.1 carry its weaker fingerprint (config.json and the first rows of two
weights, `legacy`); they keep working, compared on that fingerprint with a note.
"""
import hashlib
import json
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

from lna.core.errors import LnaError, note

PREFIX = "weights-sha256:"
UNSAVED = "unsaved"
KEYS = ("model_fingerprint", "model_fingerprint_legacy")  # where stores and neuron sets record it
CACHE_MIN_BYTES = 64 << 20  # smaller files are hashed faster than a cache entry is read
WEAKER = ("records the older, weaker model identity of lna 0.1 (config.json and a few weight rows): a "
          "fine-tune that leaves those rows unchanged looks the same; re-run lna-profile / lna-identify "
          "with this lna for the full identity")


def of(info, stop: threading.Event | None = None) -> str | None:
    """The identity of a resolved model (lna.models.loading.ModelInfo): config and weight files.
    `stop` (set by another thread): give up between blocks and return None."""
    files = weight_files(info.path)
    digests = _digests(files, stop)
    if digests is None:
        return None
    h = hashlib.sha256(json.dumps(_config(info.path), sort_keys=True).encode())
    for f, digest in zip(files, digests):
        h.update(f"{f.relative_to(info.path).as_posix()}\0{digest}\n".encode())
    return PREFIX + h.hexdigest()[:32]


def _digests(files: list, stop=None) -> list | None:
    """file_sha256 of each file, the shards of a large model in parallel (hashlib and file
    reads release the GIL), on daemon threads: a run that fails or is interrupted exits
    without waiting for a 14 GB hash. None where `stop` was set."""
    out, errors, todo, lock = [None] * len(files), [], iter(range(len(files))), threading.Lock()

    def work():
        while not errors and not (stop is not None and stop.is_set()):
            with lock:
                k = next(todo, None)
            if k is None:
                return
            try:
                out[k] = file_sha256(files[k], stop)
            except BaseException as err:  # re-raised in the caller's thread
                errors.append(err)

    workers = [threading.Thread(target=work, daemon=True, name="lna-hash")
               for _ in range(max(1, min(len(files), os.cpu_count() or 1)))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return None if any(d is None for d in out) else out


class Hashing:
    """`of` and `legacy` of a model computed on a background thread (see `hashing`)."""

    def __init__(self, info):
        self.info, self.stop, self._out = info, threading.Event(), {}
        self._thread = threading.Thread(target=self._run, daemon=True, name="lna-identity")
        self._thread.start()

    def _run(self):
        try:
            self._out["value"] = of(self.info, self.stop)
        except BaseException as err:  # re-raised by result(), in the caller's thread
            self._out["error"] = err

    def result(self) -> tuple:
        """(identity, lna 0.1's identity), once the hash is done; its error, if it failed."""
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"], legacy(self.info)


@contextmanager
def hashing(info):
    """Hash the model's weight files while the block runs (the model loads): the first run on
    a local model reads them once for both, on the cores loading leaves free; later runs
    find the digests in the cache. A block that raises stops the hash (nothing cached).

        with fingerprint.hashing(info) as identity:
            net, tokenizer = loading.load(info)
        strong, weak = identity.result()
    """
    pending = Hashing(info)
    try:
        yield pending
    except BaseException:
        pending.stop.set()
        raise


def weight_files(path: Path) -> list:
    """The weight files transformers (and vLLM) load from a model folder."""
    path = Path(path)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            try:
                names = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, AttributeError, OSError):
                raise LnaError(f"{path / index}: not a readable weight index; re-download the model") from None
            missing = [n for n in names if not (path / n).is_file()]
            if missing:
                raise LnaError(f"{path}: weight file {missing[0]} listed in {index} is missing; "
                               "re-download the model")
            return [path / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return [path / single]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LnaError(f"{path}: no weight files (model.safetensors, sharded safetensors with their index, "
                       "or pytorch_model.bin); give a complete model folder")
    return files


def file_sha256(file: Path, stop: threading.Event | None = None) -> str | None:
    """The sha256 of a weight file: a hub blob's name, else from the cache, else read (and
    cached when large). None where `stop` was set before the hash was done."""
    real = Path(os.path.realpath(file))
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name  # Hugging Face cache: LFS blobs are named by their sha256
    st = real.stat()
    if st.st_size < CACHE_MIN_BYTES:
        return _stream_sha256(real, stop)
    from lna.models.loading import cache_dir

    stat = {"path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino}
    key = hashlib.sha256(json.dumps(stat, sort_keys=True).encode()).hexdigest()[:32]
    entry = cache_dir() / "identity" / f"{key}.json"
    cached = _cached(entry, stat)
    if cached:
        return cached
    note(f"hashing the weights of {real.parent} once to identify the model (cached in {entry.parent})")
    digest = _stream_sha256(real, stop)
    if digest is None:
        return None
    record = {**stat, "sha256": digest}
    try:  # best effort: an unwritable cache only costs the hash again next time
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(json.dumps({**record, "check": _check(record)}))
        os.replace(tmp, entry)
    except OSError:
        pass
    return digest


def _check(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _cached(entry: Path, stat: dict) -> str | None:
    """The cached sha256 of the file `stat` describes, if `entry` holds one that checks out;
    else None, with a note where the entry exists but is damaged (it is hashed again)."""
    try:
        text = entry.read_bytes()
    except OSError:
        return None
    try:
        rec = json.loads(text.decode("utf-8"))
        check = rec.pop("check")
        digest = rec["sha256"]
        ok = (check == _check(rec) and re.fullmatch(r"[0-9a-f]{64}", digest)
              and {k: rec.get(k) for k in stat} == stat)
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if ok:
        return digest
    note(f"{entry}: a damaged identity cache entry; ignored (the weights are hashed again)")
    return None


def _stream_sha256(file: Path, stop: threading.Event | None = None) -> str | None:
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        while block := fh.read(16 << 20):
            if stop is not None and stop.is_set():
                return None
            h.update(block)
    return h.hexdigest()


def _config(path: Path) -> dict:
    cfg = json.loads((Path(path) / "config.json").read_text())
    for key in ("torch_dtype", "dtype", "transformers_version", "_name_or_path"):
        cfg.pop(key, None)
    return cfg


def legacy(info) -> str | None:
    """lna 0.1's fingerprint of the same model (to compare with artefacts it wrote):
    config.json and the first 4 rows of the input embeddings and of the last layer's
    down_proj, rounded to bfloat16, read from the safetensors files; None without them."""
    import torch
    from safetensors import safe_open

    names = {"model.embed_tokens.weight": None, f"model.layers.{info.layers - 1}.mlp.down_proj.weight": None}
    try:
        for file in weight_files(info.path):
            if file.suffix != ".safetensors":
                return None
            with safe_open(str(file), framework="pt") as f:
                for name in names:
                    if name in f.keys():
                        names[name] = f.get_slice(name)[:4]
    except LnaError:
        return None
    if any(rows is None for rows in names.values()):
        return None
    h = hashlib.sha256(json.dumps(_config(info.path), sort_keys=True).encode())
    for rows in names.values():
        h.update(rows.to(torch.bfloat16).to(torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def recorded(source) -> dict:
    """The identity fields of a runner (attributes) or of a store's meta / a neuron set's
    source (dict), as a dict of KEYS."""
    if isinstance(source, dict):
        return {k: source.get(k) for k in KEYS}
    return {"model_fingerprint": source.fingerprint,
            "model_fingerprint_legacy": getattr(source, "legacy_fingerprint", None)}


def _strong(ident: dict) -> str | None:
    fp = ident.get("model_fingerprint")
    return fp if isinstance(fp, str) and fp.startswith(PREFIX) else None


def _weak(ident: dict) -> str | None:
    fp = ident.get("model_fingerprint")
    if fp and fp != UNSAVED and not fp.startswith(PREFIX):
        return fp  # written by lna 0.1
    return ident.get("model_fingerprint_legacy")


def is_weaker(ident: dict) -> bool:
    """True for the fingerprint of lna 0.1 (recorded by it, or kept by a merge with its stores)."""
    fp = ident.get("model_fingerprint")
    return bool(fp) and fp != UNSAVED and not fp.startswith(PREFIX)


def combine(a: dict, b: dict, names: tuple, what: str) -> dict:
    """The identity of `a` and `b` together (the weaker of the two where they differ in kind),
    or an LnaError when they are not, or cannot be shown to be, the same model. `a`, `b`:
    dicts with "model" and KEYS; `names`: how to call them in messages; `what`: the
    refusal's opening words ("cannot combine X with Y")."""
    fa, fb = a.get("model_fingerprint"), b.get("model_fingerprint")
    for name, fp in zip(names, (fa, fb)):
        if fp == UNSAVED:
            raise LnaError(f"{what}: {name} was made with a model built in memory (unsaved), "
                           "whose weights lna cannot identify")

    def differ(kind):
        same_name = a.get("model") == b.get("model")
        raise LnaError(f"{what}: they are from different models ({a.get('model')!r} vs "
                       f"{b.get('model')!r}{', whose ' + kind + ' differ' if same_name else ''})")

    sa, sb = _strong(a), _strong(b)
    if sa and sb:
        if sa != sb:
            differ("weights")
        return {"model_fingerprint": sa, "model_fingerprint_legacy": a.get("model_fingerprint_legacy")
                or b.get("model_fingerprint_legacy")}
    wa, wb = _weak(a), _weak(b)
    if wa and wb:
        if wa != wb:
            differ("configs or weights")
        weaker = [n for n, x in zip(names, (a, b)) if is_weaker(x)]
        note(f"{weaker[0] if weaker else names[0]} {WEAKER}")
        return {"model_fingerprint": wa, "model_fingerprint_legacy": None}
    if a.get("model") != b.get("model"):
        differ("weights")
    if fa or fb:  # one side identifies its model by name only (imported counts)
        note(f"{names[0] if not fa else names[1]} identifies its model by name only ({a.get('model')!r}); "
             "the other side's weights cannot be checked against it")
    return {"model_fingerprint": None, "model_fingerprint_legacy": None}


def check_runner(source: dict, runner, what: str) -> None:
    """Refuse a neuron set's (or store's) recorded identity `source` when it is not the
    runner's model; `what` opens the refusal. Nothing recorded (sets identified on imported
    counts): nothing to check beyond the model's name."""
    rec = recorded(source)
    if not any(rec.values()):
        return
    name = runner.info.name
    combine({"model": name, **rec}, {"model": name, **recorded(runner)}, (what, name), what)

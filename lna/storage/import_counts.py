"""Import the study's released activation counts into a count store.

Two layouts (../shared/data/README.md):
- the release's `.pt` files, one pair per language: `activation.{lang}.{tag}.pt` (prompt +
  response) and `prefix.activation.{lang}.{tag}.pt` (prompt alone), each
  `{"total_tokens": int, "over_zero": LongTensor[layers, neurons]}`;
- the reference `.npz` (`langs`, `full_counts`/`prefix_counts` [language, layer, neuron],
  `full_tokens`/`prefix_tokens` [language]).

Response-token counts are the two-pass difference clamped at 0, and response tokens the
difference of the totals, so `store.probabilities()` equals the study's
`clip(full - prefix, 0) / max(full_tokens - prefix_tokens, 1)`.
"""
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lna.core import languages as langreg
from lna.core.errors import LnaError
from lna.storage.manifest import Counted
from lna.storage.counts import CountStore

DEFAULT_MODEL = "kevinpro/MistralMathOctopus-7B"
_PT_NAME = re.compile(r"^(?P<prefix>prefix\.)?activation\.(?P<lang>[^.]+)\.(?P<tag>.+)\.pt$")


@dataclass
class TwoPass:
    """One language's released counts: both passes, as int64."""
    lang: str
    full: np.ndarray  # [layer, neuron]
    prefix: np.ndarray  # [layer, neuron]
    full_tokens: int
    prefix_tokens: int
    origin: str  # where it came from, for error messages

    def response_counts(self) -> np.ndarray:
        return np.clip(self.full - self.prefix, 0, None)

    def response_tokens(self) -> int:
        return self.full_tokens - self.prefix_tokens

    def fingerprint(self) -> str:
        """sha256 of the content, so the same counts imported twice (from .pt or .npz) are
        recognised when merging and refused as double counting."""
        h = hashlib.sha256()
        h.update(f"{self.lang}:{self.full.shape}:{self.full_tokens}:{self.prefix_tokens}".encode())
        h.update(np.ascontiguousarray(self.full, "<i8").tobytes())
        h.update(np.ascontiguousarray(self.prefix, "<i8").tobytes())
        return h.hexdigest()


def import_counts(sources, *, model: str = DEFAULT_MODEL, dataset: str | None = None) -> CountStore:
    """Read released counts (folders of .pt files, .pt files, or .npz files) into a store."""
    pairs: list[TwoPass] = []
    pt_files: list[Path] = []  # read together: a pair's two files may come as two arguments
    for src in map(Path, sources):
        if src.suffix == ".npz" and src.is_file():
            pairs.extend(_read_npz(src))
        else:
            pt_files.extend(_pt_files(src))
    if pt_files:
        pairs.extend(_read_pt_files(pt_files))
    if not pairs:
        raise LnaError("nothing to import: give a folder of .pt files, .pt files, or the reference .npz")
    seen = {}
    for p in pairs:
        if p.lang in seen:
            raise LnaError(f"language {p.lang} given twice ({seen[p.lang]} and {p.origin}): import one of them")
        seen[p.lang] = p.origin
    shape = pairs[0].full.shape
    for p in pairs:
        if p.full.shape != shape:
            raise LnaError(f"{p.origin}: counts of shape {p.full.shape}, but {pairs[0].origin} has {shape}")
    counts = np.stack([p.response_counts() for p in pairs], axis=1)  # [layer, language, neuron]
    tokens = np.array([p.response_tokens() for p in pairs], np.int64)
    meta = {"model": model, "provenance": "import", "counted": "response-tokens",
            "dataset": dataset, "sources": sorted({p.origin for p in pairs})}
    store = CountStore(counts, tokens, [p.lang for p in pairs], meta)
    for p in pairs:
        # Samples unknown: the language is summed as a whole, and never with other counts of it.
        store.samples[p.lang] = Counted(unknown=[{"source": f"import:{p.fingerprint()}"}])
    return store


def _pt_files(path: Path) -> list[Path]:
    if not path.exists():
        raise LnaError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if _PT_NAME.match(f.name))
        if not files:
            raise LnaError(f"{path}: no activation.{{lang}}.{{tag}}.pt files in this folder")
        return files
    if path.suffix != ".pt":
        raise LnaError(f"{path}: not a released count file (expected a folder, .pt files or a .npz)")
    return [path]


def _read_npz(path: Path) -> list[TwoPass]:
    keys = ("langs", "full_counts", "prefix_counts", "full_tokens", "prefix_tokens")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise LnaError(f"{path}: not the reference count layout (missing {', '.join(missing)})")
            data = {k: z[k] for k in keys}
    except LnaError:
        raise
    except Exception as err:  # noqa: BLE001 - empty, truncated, not a zip, pickled objects: all foreign
        raise LnaError(f"{path}: unreadable .npz ({type(err).__name__}: {err})") from None
    if data["langs"].ndim != 1:
        raise LnaError(f"{path}: langs must be a list of language codes")
    for k in keys[1:]:
        if data[k].dtype.kind not in "iu":
            raise LnaError(f"{path}: {k} must hold integers (counts), not {data[k].dtype}")
    langs = [langreg.code_of(str(x)) for x in data["langs"]]
    K = len(langs)
    full, prefix = data["full_counts"], data["prefix_counts"]
    if full.ndim != 3 or full.shape != prefix.shape or full.shape[0] != K:
        raise LnaError(f"{path}: full_counts {full.shape} and prefix_counts {prefix.shape} do not "
                       f"match {K} languages x layers x neurons")
    if data["full_tokens"].shape != (K,) or data["prefix_tokens"].shape != (K,):
        raise LnaError(f"{path}: full_tokens and prefix_tokens must hold one total per language")
    return [_checked(TwoPass(lang, full[k].astype(np.int64), prefix[k].astype(np.int64),
                             int(data["full_tokens"][k]), int(data["prefix_tokens"][k]),
                             f"{path}[{lang}]"))
            for k, lang in enumerate(langs)]


def _read_pt_files(files: list[Path]) -> list[TwoPass]:
    """Pair `activation.*` with `prefix.activation.*` files by (language, tag)."""
    groups: dict[tuple, dict] = {}
    for f in files:
        m = _PT_NAME.match(f.name)
        if not m:
            raise LnaError(f"{f}: not a released count file name (expected activation.LANG.TAG.pt "
                           "or prefix.activation.LANG.TAG.pt)")
        key = (langreg.code_of(m["lang"]), m["tag"])
        groups.setdefault(key, {})["prefix" if m["prefix"] else "full"] = f
    by_lang: dict[str, list] = {}
    for lang, tag in groups:
        by_lang.setdefault(lang, []).append(tag)
    for lang, tags in by_lang.items():
        if len(tags) > 1:
            raise LnaError(f"several count files for {lang} (tags {', '.join(sorted(tags))}): "
                           "give the files of one model instead of the folder")
    out = []
    for (lang, tag), pair in groups.items():
        if "full" not in pair or "prefix" not in pair:
            have = pair.get("full") or pair.get("prefix")
            need = "prefix.activation" if "full" in pair else "activation"
            raise LnaError(f"{have}: its pair {need}.{lang}.{tag}.pt is missing; import both passes")
        full_tokens, full = _load_pt(pair["full"])
        prefix_tokens, prefix = _load_pt(pair["prefix"])
        if full.shape != prefix.shape:
            raise LnaError(f"{pair['full']}: shape {full.shape} differs from its prefix pass {prefix.shape}")
        out.append(_checked(TwoPass(lang, full, prefix, full_tokens, prefix_tokens, str(pair["full"]))))
    order = {code: i for i, code in enumerate(langreg.STUDY)}
    return sorted(out, key=lambda p: (order.get(p.lang, len(order)), p.lang))


def _load_pt(path: Path) -> tuple[int, np.ndarray]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever the unpickler trips on, the file is foreign
        why = (str(err).splitlines() or [type(err).__name__])[0][:120]
        raise LnaError(f"{path}: not a readable torch file ({why})") from None
    if not isinstance(obj, dict) or "total_tokens" not in obj or "over_zero" not in obj:
        raise LnaError(f"{path}: not the released layout (a dict with total_tokens and over_zero)")
    over_zero = obj["over_zero"]
    if not isinstance(over_zero, torch.Tensor) or over_zero.ndim != 2 or over_zero.is_floating_point():
        raise LnaError(f"{path}: over_zero must be an integer tensor [layers, neurons]")
    return int(obj["total_tokens"]), over_zero.to(torch.int64).numpy()


def _checked(p: TwoPass) -> TwoPass:
    if p.full.ndim != 2:
        raise LnaError(f"{p.origin}: counts must be [layers, neurons], got shape {p.full.shape}")
    if (p.full < 0).any() or (p.prefix < 0).any() or p.full_tokens < 0 or p.prefix_tokens < 0:
        raise LnaError(f"{p.origin}: negative counts; the file is damaged")
    if p.response_tokens() < 0:
        raise LnaError(f"{p.origin}: the prefix pass has more tokens ({p.prefix_tokens}) than the full "
                       f"pass ({p.full_tokens}); are the two files swapped?")
    return p

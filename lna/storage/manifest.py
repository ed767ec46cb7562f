"""Which samples a count store has counted, identified by their content.

A sample's id is 64 bits of blake2b over its token ids (prompt and response) and its
occurrence number among identical samples of its language in the run's sample list: the
same response may legitimately be sampled twice for one question, and both count. Ids do
not depend on the dataset's name, a key or a position, so the same samples profiled under
another dataset name, or a subset profiled twice, are recognised when merging; shards of
one run (`--shard`) must number occurrences over the whole list before splitting it, so
that duplicates stay distinct. 64 bits: among a million samples the chance of any
collision is below 3e-8.

Per language a store keeps the ids of the samples it counted (and their keys, for
messages), or, for counts whose samples lna never saw (released counts, stores of
lna-counts/1 that recorded positions only), "unknown" parts that are summed as a whole.
"""
import hashlib
from dataclasses import dataclass, field

import numpy as np

from lna.core.errors import LnaError


def sample_ids(samples, seen: dict | None = None) -> np.ndarray:
    """uint64 content id of each sample (see the module docstring), in list order. `seen`
    (updated in place) carries the occurrence counts over from the samples before these in
    the same list, so a list can be identified piece by piece."""
    out = np.empty(len(samples), np.uint64)
    seen = {} if seen is None else seen
    for i, s in enumerate(samples):
        prompt = np.asarray(s.prompt, "<i8").tobytes()
        content = hashlib.blake2b(len(prompt).to_bytes(8, "little") + prompt
                                  + np.asarray(s.response, "<i8").tobytes(), digest_size=16).digest()
        n = seen.get((s.lang, content), 0)
        seen[(s.lang, content)] = n + 1
        out[i] = int.from_bytes(hashlib.blake2b(content + n.to_bytes(8, "little"), digest_size=8).digest(), "little")
    return out


@dataclass
class Counted:
    """The samples counted for one language of a store."""
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # content ids
    keys: list = field(default_factory=list)  # their keys in the data, for messages only
    # Counts whose samples are not known, each part as its writer described it:
    # {"source": "import:<sha256 of the released counts>"} or an lna-counts/1 manifest part
    # {"source": "sha256:<digest of the sample list>", "total": n, "done": "all" | bits}.
    unknown: list = field(default_factory=list)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, np.uint64).reshape(-1)
        self.keys = list(self.keys)
        if len(self.keys) != len(self.ids):
            raise LnaError(f"inconsistent sample manifest: {len(self.ids)} ids, {len(self.keys)} keys")

    def add(self, ids, keys) -> None:
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.uint64)])
        self.keys = self.keys + [str(k) for k in keys]

    def sorted(self) -> "Counted":
        """Canonical order (by id): the same samples give the same manifest however counted."""
        order = np.argsort(self.ids, kind="stable")
        return Counted(self.ids[order], [self.keys[i] for i in order], list(self.unknown))

    def copy(self) -> "Counted":
        return Counted(self.ids.copy(), list(self.keys), [dict(p) for p in self.unknown])


def combine(lang: str, mine: Counted, theirs: Counted, names: tuple, tokens: tuple) -> Counted:
    """The manifest of the sum of two stores' `lang` counts; refuses anything that could
    count a sample twice. `names`: the two stores (for messages); `tokens`: their `lang`
    response tokens (a side with none adds nothing, whatever its manifest)."""
    if not tokens[1]:
        return mine.copy()
    if not tokens[0]:
        return theirs.copy()
    for side, c in enumerate((mine, theirs)):
        if c.unknown or not len(c.ids):
            other = (mine, theirs)[1 - side]
            if {p["source"] for p in c.unknown} & {p["source"] for p in other.unknown}:
                raise LnaError(f"cannot merge {lang}: {names[0]} and {names[1]} hold the same imported "
                               "counts: summing would count them twice")
            raise LnaError(f"cannot merge {lang}: {names[side]} holds {_unknown_kind(c)}, so lna cannot tell "
                           f"whether they overlap the {lang} counts of {names[1 - side]}; merge it only with "
                           "stores of other languages")
    common, i, j = np.intersect1d(mine.ids, theirs.ids, return_indices=True)
    if len(common):
        raise LnaError(f"cannot merge {lang}: {len(common)} of its {len(theirs.ids)} samples in {names[1]} are "
                       f"already counted in {names[0]} (e.g. {theirs.keys[j[0]]} is {mine.keys[i[0]]} there: same "
                       "tokens); summing would count them twice")
    return Counted(np.concatenate([mine.ids, theirs.ids]), mine.keys + theirs.keys)


def _unknown_kind(c: Counted) -> str:
    if any(p["source"].startswith("import:") for p in c.unknown):
        return "imported counts (their samples are unknown)"
    if c.unknown:
        return ("counts of an older lna that recorded its samples by position (re-run lna-profile with "
                "this lna to make them mergeable)")
    return "counts whose samples are not recorded"


def legacy_done(part: dict) -> np.ndarray:
    """Which samples an lna-counts/1 manifest part marks as counted (bool [total])."""
    import base64

    if part["done"] == "all":
        return np.ones(part["total"], bool)
    bits = np.unpackbits(np.frombuffer(base64.b64decode(part["done"]), np.uint8))
    return bits[: part["total"]].astype(bool)


def keys_blob(keys) -> bytes:
    """Keys as a store keeps them: utf-8, one a line (a newline inside a key becomes a space)."""
    return "\n".join(str(k).replace("\n", " ") for k in keys).encode()


def ids_crc(ids) -> int:
    """CRC-32 of sample ids as a store keeps them (little-endian uint64)."""
    import zlib

    return zlib.crc32(np.ascontiguousarray(ids, "<u8"))

"""`lna merge`: the sum of count stores of one model (shards, extra languages).

Rules (docs/formats.md, "Merging"):
- The stores count the same thing (IDENTITY: counted, activation, layers, neurons) with the
  same model (lna.models.fingerprint.combine: equal weight identities; lna 0.1's weaker fingerprint
  or the model's name where one side has nothing better, with a note).
- A language held by one input is taken as is. A language held by several is summed only
  where every input identifies its samples by content and no sample is in two inputs
  (lna.storage.manifest.combine): disjoint shards sum exactly to one run over their union; any
  overlap, partial or under another dataset name, is refused with its size and an example.
- Imported counts (released .pt/.npz: their samples are unknown) and stores of lna 0.1
  (samples recorded by position) are wholes: they merge with other languages only, since
  nothing can show that another input's samples of that language are not among theirs.
- Shards of one run (lna-profile --shard K/N) merge only as a whole run: each of 1..N once
  and finished, never completed by a shard of another run (lna.profiling.shards.combine); `partial`
  accepts missing ones and records which are in.
- Activation sums (sums, active_sums) add like counts. A store without them (older stores,
  imports, --no-sums profiles) still merges - its counts are as good as ever, and refusing
  would block adding languages to released counts - but the languages it counted get
  unknown sums (NaN) in the result, with a note naming them; the others keep theirs, so
  lna-steer still finds the mean activation of every language whose sums are whole.
"""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from lna.profiling import shards
from lna.core import lock
from lna.core.errors import LnaError, note
from lna.storage.manifest import combine
from lna.storage.counts import SETTINGS, CountStore, check_compatible, counted_during, validate
from lna.storage.store import open_store, save_store


def merge(stores: list[CountStore], names=None, *, partial: bool = False) -> CountStore:
    """Sum stores of the same model; refuse anything that could count a sample twice, and
    an incomplete set of shards unless `partial`. `names`: what to call each store in
    messages (their paths)."""
    if not stores:
        raise LnaError("nothing to merge")
    names = list(names or [f"store {i + 1}" for i in range(len(stores))])
    shard = shards.combine(stores, names, partial=partial)
    out = stores[0]
    copy = (lambda a: None if a is None else a.copy())
    out = replace(out, counts=out.counts.copy(), tokens=out.tokens.copy(), meta=json.loads(json.dumps(out.meta)),
                  samples={lang: c.copy() for lang, c in out.samples.items()}, sums=copy(out.sums),
                  active_sums=copy(out.active_sums), expert_counts=copy(out.expert_counts), routed=copy(out.routed))
    so_far = names[0]
    for other, name in zip(stores[1:], names[1:]):
        ident = check_compatible(out, other, names=(so_far, name))
        if out.has_sums != other.has_sums:
            without, lacking = (so_far, out) if other.has_sums else (name, other)
            lost = [lang for lang, n in zip(lacking.languages, lacking.tokens) if n]
            if lost:
                note(f"{without} has no activation sums: the merged store's sums of {', '.join(lost)} are unknown "
                     "(NaN); lna-steer needs the sums of its target language (lna-profile --sums)")
            out, other = out.with_sums(), other.with_sums()
        for key in SETTINGS:  # equal where both have them (check_compatible): either one's
            if not out.meta.get(key) and other.meta.get(key):
                out.meta[key] = other.meta[key]
        for key, value in ident.items():
            if value is None:
                out.meta.pop(key, None)
            else:
                out.meta[key] = value
        # Imported counts are not exact (two-pass differences): the sum is not either.
        if "import" in (out.meta.get("provenance"), other.meta.get("provenance")):
            out.meta["provenance"] = "import"
        for lang in other.languages:
            out = out.with_language(lang)
            k, j = out.index(lang), other.index(lang)
            out.samples[lang] = combine(lang, out.counted(lang), other.counted(lang), (so_far, name),
                                        (int(out.tokens[k]), int(other.tokens[j])))
            # NaN sums (unknown) stay unknown
            out.add(k, other.counts[:, j], other.tokens[j],
                    *((other.sums[:, j], other.active_sums[:, j]) if out.has_sums else ()),
                    experts=(other.expert_counts[:, :, j], other.routed[:, :, j]) if other.has_experts else None)
        out.complete = out.complete and other.complete
        out.meta["counted_during"] = counted_during(out.meta.get("counted_during", "force-decoding"),
                                                    other.meta.get("counted_during", "force-decoding"))
        for key in ("dataset", "backend"):
            values = [v for v in (out.meta.get(key), other.meta.get(key)) if v]
            if values and values[0] != values[-1]:
                out.meta[key] = f"{values[0]}+{values[-1]}"
        so_far = f"{so_far} + {name}" if len(so_far) < 200 else "the stores before it"
    out.samples = {lang: c for lang, c in out.samples.items() if len(c.ids) or c.unknown}
    out.meta.pop("shard", None)  # a whole run's sum is that run's store
    if shard is not None:
        out.meta["shard"] = shard
    validate(out)
    return out


def run(inputs, out, *, force: bool = False, partial: bool = False) -> CountStore:
    """The command: read, check and sum INPUTS, write OUT (refused if it exists, unless force)."""
    out = Path(out)
    lock.acquire(out, "count store")  # first: a device, FIFO or socket is refused as such
    if out.exists() and not force:
        raise LnaError(f"{out}: already exists; give --force to replace it, or choose another -o")
    stores = [open_store(path) for path in inputs]
    merged = merge(stores, names=[str(p) for p in inputs], partial=partial)
    save_store(merged, out)
    return merged


def summary(store: CountStore) -> str:
    text = ", ".join(f"{lang} {int(n):,} tokens" for lang, n in zip(store.languages, np.asarray(store.tokens)))
    if store.meta.get("shard"):
        text += f"; partial: {shards.describe(store.meta['shard'])} only"
    return text

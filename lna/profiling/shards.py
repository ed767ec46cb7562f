"""Shards of one profile: `lna-profile --shard K/N` counts a deterministic part of a run.

Shards are numbered 1..N. The partition is by question: a question, with all its
responses, goes to shard 1 + (first 8 bytes of blake2b over its prompt's token ids, as
little-endian int64, read as a little-endian integer) mod N (RULE). It depends on the
prompt's tokens only - not on the data's order, its keys or the dataset's name - so every
shard command, on any machine, draws the same partition, and samples sharing a prompt
stay together (their prompt is processed once). Since identical prompts fall in one shard,
samples with identical tokens do too, in the same relative order as in the whole run: the
occurrence numbers inside their content ids (lna.storage.manifest) are those of the whole run, so
identical samples stay distinct across shards and the N shard stores sum exactly to the
store of one run (`lna merge`).

A shard store records meta["shard"] = {"shards": [K], "count": N, "rule": RULE, "run": RUN}:
RUN identifies the whole run's sample set independently of order (every selected
question's language, prompt and given responses, and the sampling settings where
responses are to be sampled). `lna merge` (combine below) sums the shards of a run only
when each of 1..N is there once and finished; `--partial` accepts missing ones and records
which are in, so that the rest can be merged in later. Shards of another run never
complete a run.

A shard samples responses for its own questions only, each question from a seed of its own
(lna.inputs.samples.question_seed): the responses one unsharded run would sample, so the
merged store is that run's (counted in other batches: up to gates within rounding of zero).
"""
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from lna.core.errors import LnaError

RULE = "blake2b-64(prompt token ids, int64 le) mod N, +1"


@dataclass(frozen=True)
class Shard:
    index: int  # 1..count
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse(spec) -> Shard:
    """'K/N' -> Shard(K, N); one-line LnaError otherwise."""
    text = str(spec).strip()
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise LnaError(f"--shard {spec}: give K/N, shard K of N with K from 1 to N (e.g. --shard 1/4)")
    k, n = int(k), int(n)
    if n < 1:
        raise LnaError(f"--shard {spec}: N must be at least 1")
    if not 1 <= k <= n:
        raise LnaError(f"--shard {spec}: K must be from 1 to {n} (shards are numbered from 1)")
    return Shard(k, n)


def of_prompt(prompt_ids, n: int) -> int:
    """The shard (1..n) of a question with these prompt token ids (RULE)."""
    digest = hashlib.blake2b(np.asarray(prompt_ids, "<i8").tobytes(), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % n


def split(questions: list, shard: Shard | None, tokenizer, template, sampling: dict) -> tuple:
    """(the questions of `shard`, its record for the store); (questions, None) unsharded.
    `questions`: the whole run's, after language selection and --limit; `sampling`: the
    settings responses would be sampled with."""
    if shard is None:
        return questions, None
    from lna.inputs import responses

    tid = responses.tokenizer_id(tokenizer)
    mine = [q for q in questions if of_prompt(_prompt_ids(q, tokenizer, template, tid), shard.count) == shard.index]
    return mine, {"shards": [shard.index], "count": shard.count, "rule": RULE,
                  "run": run_identity(questions, template, sampling)}


def _prompt_ids(q, tokenizer, template, tid) -> list:
    """The prompt tokens the run's samples will have (lna.inputs.responses keeps the ids a
    responses file recorded for this tokenizer, else encodes the prompt)."""
    from lna.inputs import responses

    if q.responses and q.tokenizer == tid and q.prompt_ids is not None and q.response_ids is not None:
        return q.prompt_ids
    return responses.encode(tokenizer, q.render(template))


def run_identity(questions: list, template, sampling: dict) -> str:
    """Order-independent digest of what the run counts: per question its language, prompt
    and given responses; the sampling settings where some are to be sampled."""
    per = sorted(hashlib.sha256(json.dumps([q.lang, q.render(template), list(q.responses or [])],
                                           ensure_ascii=False).encode()).digest() for q in questions)
    h = hashlib.sha256(b"".join(per))
    if any(not q.responses for q in questions):
        h.update(json.dumps(sampling, sort_keys=True).encode())
    return "sha256:" + h.hexdigest()[:32]


def describe(record: dict) -> str:
    """'shard 2/4' or 'shards 1,3 of 4'."""
    ks, n = record["shards"], record["count"]
    return f"shard {ks[0]}/{n}" if len(ks) == 1 else f"shards {','.join(map(str, ks))} of {n}"


def check_resume(out, existing: dict | None, record: dict | None) -> None:
    """Refuse to continue a store (meta["shard"] `existing`) with a run of another shard."""
    if existing == record:
        return
    if existing is None:
        raise LnaError(f"{out} holds an unsharded profile; this run is {describe(record)}: choose another --out")
    if record is None:
        raise LnaError(f"{out} holds {describe(existing)} of a run: rerun with --shard "
                       f"{'/'.join(map(str, (existing['shards'][0], existing['count'])))} or choose another --out")
    split = ("shards", "count", "rule")
    if [existing.get(key) for key in split] != [record[key] for key in split]:
        raise LnaError(f"{out} holds {describe(existing)}; this run is {describe(record)}: choose another --out")
    raise LnaError(f"{out} holds {describe(existing)} of another run (other data, languages, --limit, template "
                   "or sampling settings); choose another --out")


def combine(stores: list, names: list, *, partial: bool = False) -> dict | None:
    """The shard record (meta["shard"]) of the sum of `stores` (CountStores), or an
    LnaError for a repeated or foreign shard, and for a missing or unfinished one unless
    `partial`. None when each run present is whole (the sum is those whole runs)."""
    runs: dict = {}
    for store, name in zip(stores, names):
        rec = store.meta.get("shard")
        if rec is None:
            continue
        if not isinstance(rec, dict) or not {"shards", "count", "rule", "run"} <= set(rec):
            raise LnaError(f"{name}: its shard record is damaged ({rec!r}); re-run its lna-profile --shard command")
        run = runs.setdefault(rec["run"], {"count": rec["count"], "rule": rec["rule"], "by": {}, "first": name})
        if (rec["count"], rec["rule"]) != (run["count"], run["rule"]):
            raise LnaError(f"cannot merge {name} ({describe(rec)}) with {run['first']} "
                           f"({describe({'shards': sorted(run['by']), 'count': run['count']})}): the same run cut "
                           "into another number of shards or by another rule; merge the shards of one split")
        for k in rec["shards"]:
            if k in run["by"]:
                raise LnaError(f"cannot merge: shard {k}/{rec['count']} is given twice ({run['by'][k]} and {name}); "
                               "give each shard once")
            run["by"][k] = name
        if not store.complete and not partial:
            raise LnaError(f"cannot merge: {name} ({describe(rec)}) is unfinished; rerun its lna-profile --shard "
                           "command to finish it, or --partial to merge what it has")
    merged = []
    for run_id, run in runs.items():
        missing = [k for k in range(1, run["count"] + 1) if k not in run["by"]]
        if missing and not partial:
            other = "" if len(runs) == 1 else " (the stores hold shards of several runs: shards of one run " \
                                              "are never completed by another's)"
            raise LnaError(f"cannot merge: shard{'s' if len(missing) > 1 else ''} {','.join(map(str, missing))} "
                           f"of {run['count']} {'are' if len(missing) > 1 else 'is'} missing (given: "
                           f"{describe({'shards': sorted(run['by']), 'count': run['count']})} of the run of "
                           f"{run['first']}){other}; give every shard store, or --partial to merge these "
                           "(recorded as partial)")
        if missing:
            merged.append({"shards": sorted(run["by"]), "count": run["count"], "rule": run["rule"], "run": run_id})
    if len(merged) > 1:
        raise LnaError("--partial merges the shards of one run at a time: these stores hold incomplete shard sets "
                       f"of {len(merged)} runs")
    return merged[0] if merged else None

"""lna-profile: dataset -> responses -> counts -> count store, resumable.

Where the data has no responses, they are sampled in fixed seeded batches of questions
(lna.inputs.responses) and counted while they are sampled (each response token is counted when
the decoding loop feeds it back; lna.runners.base.generate_counting): a batch's counts go
into the store in memory right after its responses are appended to the responses file, in
one shielded step, so a checkpointed store never holds counts of responses the file lacks.
Responses the file holds but the store has not counted (given by the data, or sampled by a
run killed before its next checkpoint) are then force-decoded. The store records which way
its counts were taken (meta `counted_during`: "sampling", "force-decoding", or both joined
by "+"); `--force-decode` samples everything first, then force-decodes it.

Force-decoding cuts the work into chunks of about one forward batch of whole questions
(length-sorted, so batches pad little). After each chunk (or sampled batch) its counts are
added in memory and its samples marked done (one shielded step: an interrupt never lands
between the two); the progress bar moves, and the store is rewritten atomically once
`checkpoint_every` seconds have passed, at the end, and when the run stops on an error,
Ctrl-C or SIGTERM. A killed (SIGKILL) run loses at most the batches since the last
checkpoint, and its rerun counts each sample once.

`shard` ("K/N") counts only shard K of N of the run's questions (lna.profiling.shards: by prompt,
whatever the data's order); the store records which, and `lna merge` of the N shard
stores is exactly this run's store.
"""
import contextlib
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from lna import kernels
from lna.core import languages, lock

from lna.inputs import data, responses

from lna.profiling import shards
from lna.core.errors import LnaError, note
from lna.core.checkpoint import Checkpointer
from lna.core.interrupts import shielded
from lna.storage.manifest import Counted, legacy_done, sample_ids
from lna.runners.packing import chunks
from lna.core.progress import Bar, sayer
from lna.runners.options import Opened, RunnerOptions, open_runner
from lna.storage.counts import CountStore, check_compatible, counted_during
from lna.storage.store import open_store, save_store


@dataclass(kw_only=True)
class Options(RunnerOptions):
    langs: str | None = "all"
    dataset: str = "mgsm"
    out: str | None = None
    responses: str | None = None  # default: beside the store
    samples: int = 10
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    limit: int | None = None  # questions per language (quick runs)
    checkpoint_every: float = 60.0
    sums: bool = True  # activation sums beside the counts (benches/results/profile_cpu.json: their cost)
    progress: bool = True
    shard: str | None = None  # "K/N": only shard K of N of the questions (lna.profiling.shards)
    report: object = None  # report(done, total): the store's response tokens, after each batch (lna launch)
    force_decode: bool = False  # count sampled responses afterwards, not while sampling them


def default_out(model: str, dataset: str, shard=None) -> Path:
    name = Path(model.rstrip("/")).name.replace("lna:", "")
    part = f".shard-{shard.index}-of-{shard.count}" if shard else ""
    return Path(f"{name}.{Path(dataset).stem}{part}.zarr")


def run(opts: Options) -> Path:
    with lock.scope():  # the store and the responses file are this run's until it ends
        return _run(opts)


def _run(opts: Options) -> Path:
    shard = shards.parse(opts.shard) if opts.shard else None
    name, questions = data.load(opts.dataset, opts.langs, limit=opts.limit)
    langs = list(dict.fromkeys(q.lang for q in questions))
    _check_given_responses(questions)
    out = Path(opts.out) if opts.out else default_out(opts.model, opts.dataset, shard)
    resp_path = Path(opts.responses) if opts.responses else responses.path_beside(out)
    lock.acquire(out, "count store")
    lock.acquire(resp_path, "responses file")
    existing = open_store(out) if out.exists() else None  # a non-store is refused, untouched
    say = sayer(opts.progress)

    model = open_runner(opts)
    runner, template, backend = model.runner, model.template, model.backend
    layout = getattr(runner, "layout", None)  # a mixture-of-experts model (lna.runners.moe)
    if layout is not None and opts.sums:
        say("activation sums are not kept for mixture-of-experts models: counting only")
        opts = replace(opts, sums=False)
    # said once the model has loaded: a failure before it is the only line
    if opts.langs is not None and opts.langs.strip().lower() == "all":
        differs = languages.all_note(langs)
        if differs:
            say(differs)
    prompts = responses.template_record(questions, template)
    if opts.template is not None and not prompts["template_text"]:
        say(f"the data gives every prompt verbatim: --template {opts.template} is not applied")
    _check_dtype(existing, out, model.dtype)
    _check_template(existing, out, prompts)
    sampling = {"n": opts.samples, "temperature": opts.temperature, "top_p": opts.top_p,
                "max_new_tokens": opts.max_new_tokens, "seed": opts.seed}
    n_questions = len(questions)
    questions, shard_record = shards.split(questions, shard, runner.tokenizer, template, sampling)
    part = f" (shard {shard}: {len(questions):,} of {n_questions:,} questions)" if shard else ""
    if existing is not None:
        shards.check_resume(out, existing.meta.get("shard"), shard_record)
    meta = _meta(opts, model, name, prompts, shard_record, layout,
                 sampling if any(not q.responses for q in questions) else None)
    fresh = CountStore.empty(langs, runner.layers, runner.neurons, meta, sums=opts.sums,
                             experts=None if layout is None else (layout.experts, layout.expert_neurons))
    store = _store(existing, fresh, out, opts)
    for lang in langs:
        store = store.with_language(lang)

    plan = responses.plan(questions, runner.tokenizer, template, resp_path, n=opts.samples,
                          temperature=opts.temperature, top_p=opts.top_p, max_new_tokens=opts.max_new_tokens,
                          seed=opts.seed)
    del questions
    # Count while sampling where responses are sampled, unless the store holds samples that the
    # responses file lacks (it was lost or replaced): then sample first and let the ledger judge.
    saver = Checkpointer(partial(_save, store, out), every=opts.checkpoint_every)
    while_sampling = None
    # (mixture-of-experts models are counted by force-decoding only)
    if plan.todo and not opts.force_decode and layout is None and _holds_only(store, responses.samples(plan.known())):
        while_sampling = _WhileSampling(store, plan.questions, saver, out, opts.report)
        say(f"sampling {sum(len(i) for i in plan.todo.values()):,} questions x {opts.samples} responses and "
            f"counting them while sampling with {backend} on {runner.device} -> {out}")
    bar = lambda total: Bar(opts.progress, total, "sample+count" if while_sampling else "sample", "question")  # noqa: E731
    with saver.on_stop():
        responses.sample(plan, runner, progress=bar, count=while_sampling)
    samples = responses.samples(plan.questions)  # compact int32 token arrays
    del plan  # host memory holds tokens once, never activations: it stays flat while counting
    empty = [lang for lang in langs if not any(s.lang == lang for s in samples)]
    if empty and shard is None:  # a shard may hold no question of a language, or none at all
        raise LnaError(f"{resp_path}: every response in {', '.join(empty)} is empty, so there is nothing to "
                       "count; check that file (delete it to sample again, e.g. with another --template or "
                       f"--seed) or leave {', '.join(empty)} out with --langs")
    with saver.on_stop():  # the same checkpoints as sampling's: what it counted is saved on any stop
        ledger = _Ledger(store, samples, out)
        todo = [s for s in samples if not ledger.is_done(s)]
        todo_tokens = sum(len(s.response) for s in todo)
        say(f"profiling {todo_tokens:,} response tokens of {len(todo):,} samples{part} "
            f"({len(samples) - len(todo):,} already counted) with {backend} on {runner.device} -> {out}")
        _count(runner, store, saver, ledger, todo, opts)
    say(f"wrote {out} (responses: {resp_path})")
    return out


def _count(runner, store: CountStore, saver: Checkpointer, ledger: "_Ledger", todo: list, opts: Options) -> None:
    """Count `todo` batch by batch into `store`; checkpoint by time and at the end (the caller
    holds `saver.on_stop()`, so that finished batches are never lost)."""
    budget = getattr(runner, "token_budget", None) or opts.token_budget or 16384  # vLLM: tokens per call
    report = opts.report or (lambda done, total: None)
    done = int(store.tokens.sum())
    total = done + sum(len(s.response) for s in todo)
    report(done, total)
    with Bar(opts.progress, sum(len(s.response) for s in todo), "count", "tok") as bar:
        for idx in chunks(todo, budget):
            chunk = [todo[i] for i in idx]
            langs = list(dict.fromkeys(s.lang for s in chunk))  # only these come back from the device
            counts, tokens, *sums = runner.count(chunk, langs, sums=store.has_sums)
            experts = sums.pop() if store.has_experts else None  # lna.runners.moe.ExpertTables
            k = [store.index(lang) for lang in langs]
            with shielded():
                _mark_counted_during(store, "force-decoding")  # before the counts: it reads the tokens
                store.add(k, counts, tokens, *sums, experts=experts)
                ledger.mark(chunk)
                saver.changed()
            bar.update(int(tokens.sum()))
            done += int(tokens.sum())
            report(done, total)
            saver.tick()
    saver.save(complete=ledger.complete())


def _save(store: CountStore, out: Path, complete: bool = False) -> None:
    store.complete = complete
    save_store(store, out)


COUNTED_DURING = "counted_during"  # store meta: "sampling", "force-decoding" or both (lna.storage.counts.counted_during)


def _mark_counted_during(store: CountStore, way: str) -> None:
    before = store.meta.get(COUNTED_DURING) or ("force-decoding" if store.tokens.sum() else None)
    store.meta[COUNTED_DURING] = counted_during(before, way)


def _holds_only(store: CountStore, known: list) -> bool:
    """The store's samples are all among `known` (the samples whose responses the run has
    before sampling), so the samples it will sample are not in it."""
    ids = sample_ids(known)
    for lang in store.languages:
        counted = store.counted(lang)
        if counted.unknown or not np.isin(counted.ids, ids).all():
            return False
    return True


class _WhileSampling:
    """Takes the counts (and activation sums, where the store keeps them) of each batch
    sampled by lna.inputs.responses.sample, right after its responses are appended to the file,
    into the store, with its samples' content ids."""

    def __init__(self, store: CountStore, questions: list, saver: Checkpointer, out: Path, report=None):
        self.store, self.questions, self.saver, self.out = store, questions, saver, out
        self.sums = store.has_sums  # what lna.inputs.responses.sample asks generate_counting for
        self.report = report or (lambda done, total: None)
        self.where = {q.key: i for i, q in enumerate(questions)}
        self.position, self.seen = 0, {}  # questions hashed so far; identical samples seen (lna.storage.manifest)

    def __call__(self, batch: list, languages: list, counts: np.ndarray, tokens: np.ndarray, *sums) -> None:
        store = self.store
        end = max(self.where[q.key] for q in batch) + 1
        if end <= self.position:
            raise LnaError("internal error: sampled batches out of order; use --force-decode, and report this")
        # Ids over the run's list of samples in order: every question before `end` is known by now.
        before = responses.samples(self.questions[self.position:end])
        ids = sample_ids(before, self.seen)
        self.position = end
        mine = {q.key for q in batch}
        by_lang: dict = {}
        for s, i in zip(before, ids.tolist()):
            if s.group in mine:
                by_lang.setdefault(s.lang, ([], []))
                by_lang[s.lang][0].append(i)
                by_lang[s.lang][1].append(s.key)
        for lang, (new, keys) in by_lang.items():
            if np.isin(np.array(new, np.uint64), store.counted(lang).ids).any():
                raise LnaError(f"{self.out} already counted some of the {lang} responses just sampled; "
                               "profile into a new --out (or pass --force-decode)")
        _mark_counted_during(store, "sampling")  # before the counts: it reads the tokens
        k = [store.index(lang) for lang in languages]
        store.add(k, counts, tokens, *(sums if self.sums else ()))
        for lang, (new, keys) in by_lang.items():
            store.counted(lang).add(new, keys)
        self.saver.changed()
        self.saver.tick()
        self.report(int(store.tokens.sum()), None)  # the total is known once every batch is sampled


def _meta(opts: Options, model: Opened, dataset: str, prompts: dict, shard_record: dict | None, layout=None,
          sampling: dict | None = None) -> dict:
    """The store's record of what made it; `sampling`: the settings of sampled responses, where
    any are sampled (given ones have none)."""
    runner = model.runner
    info = runner.info  # the runner's own record (a test may hand in another runner)
    return {
        "model": opts.model, "model_name": info.display, "model_fingerprint": runner.fingerprint,
        "model_fingerprint_legacy": getattr(runner, "legacy_fingerprint", None), "revision": info.revision,
        "architecture": info.architecture, "family": info.family.name, "dtype": model.dtype,
        "backend": model.backend, "dataset": dataset, **prompts, "provenance": "profile",
        "kernel": f"lna.kernels/{kernels.VERSION}",
        **(layout.meta() if layout is not None else {}),
        **({"shard": shard_record} if shard_record else {}),
        **({"sampling": sampling} if sampling else {}),
    }


def _check_dtype(existing: CountStore | None, out: Path, dtype: str) -> None:
    """A store is resumed in the dtype it was counted in (its counts would mix two)."""
    if existing is not None and existing.meta.get("dtype") not in (None, dtype):
        raise LnaError(f"{out} holds counts computed in {existing.meta['dtype']}; this run computes in {dtype}: "
                       f"pass --dtype {existing.meta['dtype']}, or choose another --out")


def _check_template(existing: CountStore | None, out: Path, prompts: dict) -> None:
    """A store is resumed with the prompts it was counted with, or not at all."""
    if existing is not None and existing.meta.get("template") != prompts["template"]:
        raise LnaError(f"{out} holds counts of prompts made with template {existing.meta.get('template')!r}; "
                       f"this run's are {prompts['template']!r}: pass the store's --template, or choose another --out")
    if existing is not None and existing.meta.get("template_text", "") != prompts["template_text"]:
        raise LnaError(f"{out} holds counts of prompts made with another text of template "
                       f"{prompts['template']!r} (configs/models.yaml or the tokenizer's chat template "
                       f"changed); choose another --out")


def _store(existing: CountStore | None, fresh: CountStore, out: Path, opts: Options) -> CountStore:
    """The store the run counts into: `fresh`, or the `existing` one if it is compatible."""
    if existing is None:
        return fresh
    check_compatible(existing, fresh, what=f"{out} with this run (it was made by another model or setting)",
                     names=(str(out), opts.model))
    store = _continued(existing, opts.sums, out)
    for key in ("kernel", "sampling"):  # recorded from now on in a store of an older lna
        if key in fresh.meta:
            store.meta.setdefault(key, fresh.meta[key])
    return store


def _continued(existing: CountStore, sums: bool, out: Path) -> CountStore:
    """The store a run continues: one with activation sums keeps summing (its sums must stay
    whole); one without gets them from now on where asked, its counted languages' sums
    unknown (NaN), with a note."""
    if existing.has_sums and not sums:
        note(f"{out} has activation sums: this run adds to them too (--no-sums applies to new stores)")
    if sums and not existing.has_sums:
        lost = [lang for lang, n in zip(existing.languages, existing.tokens) if n]
        if lost:
            note(f"{out} was profiled without activation sums: its sums of {', '.join(lost)} stay unknown "
                 "(NaN); profile into a new --out for whole sums")
        return existing.with_sums()
    return existing


def _check_given_responses(questions) -> None:
    """A language whose given responses are all empty has nothing to count: say so before
    anything is written (sampled responses are checked once sampled)."""
    by_lang: dict = {}
    for q in questions:
        by_lang.setdefault(q.lang, []).append(q)
    empty = [lang for lang, qs in by_lang.items()
             if all(q.responses for q in qs) and not any(r for q in qs for r in q.responses)]
    if empty:
        raise LnaError(f"every response in {', '.join(empty)} of the data is empty, so there is nothing to "
                       f"count; give responses, or leave {', '.join(empty)} out with --langs")


class _Ledger:
    """Which of this run's samples the store has counted, by content id (lna.storage.manifest),
    kept in step with the store's manifest."""

    def __init__(self, store: CountStore, samples, out):
        self.store = store
        ids = sample_ids(samples).tolist()
        self.id_of = {id(s): i for s, i in zip(samples, ids)}  # by object: keys need not be unique
        by_lang: dict = {}
        for s, i in zip(samples, ids):
            by_lang.setdefault(s.lang, []).append((s, i))
        self.done = set()
        for lang, group in by_lang.items():
            counted = store.counted(lang)
            if counted.unknown:
                counted = store.samples[lang] = _upgrade(counted, group, lang, out)
            foreign = ~np.isin(counted.ids, np.array([i for _, i in group], np.uint64))
            if foreign.any():
                raise LnaError(f"{out} already holds {int(foreign.sum())} {lang} samples this run does not have "
                               f"(e.g. {counted.keys[int(np.argmax(foreign))]}): it was made from other data; "
                               "profile into a new --out and combine the stores with `lna merge`")
            self.done.update(counted.ids.tolist())
        self.todo = set(ids) - self.done

    def is_done(self, s) -> bool:
        return self.id_of[id(s)] in self.done

    def mark(self, chunk) -> None:
        by_lang: dict = {}
        for s in chunk:
            by_lang.setdefault(s.lang, []).append(s)
        for lang, group in by_lang.items():  # one append a language: a manifest grows by chunks
            ids = [self.id_of[id(s)] for s in group]
            self.store.counted(lang).add(ids, [s.key for s in group])
            self.done.update(ids)
            self.todo.difference_update(ids)

    def complete(self) -> bool:
        return not self.todo


def _upgrade(counted: Counted, group: list, lang: str, out) -> Counted:
    """A store of lna 0.1 recorded its samples by position in the run's list of `lang`
    samples (named by the list's digest): the same list maps them to content ids exactly."""
    parts, samples = counted.unknown, [s for s, _ in group]
    if len(parts) == 1 and parts[0].get("total") == len(group) and parts[0]["source"] == responses.digest(samples):
        done = legacy_done(parts[0])
        return Counted([i for (_, i), d in zip(group, done) if d], [s.key for s, d in zip(samples, done) if d])
    kind = "imported" if any(p["source"].startswith("import:") for p in parts) else "other"
    raise LnaError(f"{out} already holds {kind} {lang} counts whose samples lna cannot match with this run's; "
                   f"profile {lang} into a new --out (and combine other languages with `lna merge`)")

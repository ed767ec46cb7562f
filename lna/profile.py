"""lna-profile: dataset -> responses -> force-decoded counts -> count store, resumable.

Work is cut into chunks of whole questions (length-sorted, so batches pad little). After
each chunk its counts are added in memory and its samples marked done; the store is
rewritten atomically every `checkpoint_every` seconds and at the end. A killed run loses
at most the chunks since the last checkpoint, and its rerun counts each sample once.
"""
import time
from dataclasses import dataclass
from pathlib import Path

from lna import config, data, responses
from lna.errors import LnaError
from lna.packing import chunks
from lna.progress import Bar, sayer
from lna.runners import make_runner
from lna.store import CountStore, check_compatible, open_store, save_store


@dataclass
class Options:
    model: str
    langs: str | None = "all"
    dataset: str = "mgsm"
    out: str | None = None
    backend: str = "auto"
    device: str | None = None
    dtype: str | None = None
    responses: str | None = None  # default: beside the store
    template: str | None = None
    samples: int = 10
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    limit: int | None = None  # questions per language (quick runs)
    token_budget: int | None = None
    max_row_tokens: int = 2048
    checkpoint_every: float = 60.0
    progress: bool = True


def default_out(model: str, dataset: str) -> Path:
    name = Path(model.rstrip("/")).name.replace("lna:", "")
    return Path(f"{name}.{Path(dataset).stem}.zarr")


def run(opts: Options) -> Path:
    name, questions = data.load(opts.dataset, opts.langs, limit=opts.limit)
    langs = list(dict.fromkeys(q.lang for q in questions))
    out = Path(opts.out) if opts.out else default_out(opts.model, opts.dataset)
    existing = open_store(out) if out.exists() else None  # a non-store is refused, untouched
    template_name, template = config.template_for(opts.model, opts.template)

    runner, backend, dtype = make_runner(opts.model, backend=opts.backend, device=opts.device, dtype=opts.dtype,
                                         token_budget=opts.token_budget, max_row_tokens=opts.max_row_tokens)
    meta = {
        "model": opts.model, "model_fingerprint": runner.fingerprint, "revision": runner.info.revision,
        "architecture": runner.info.architecture, "dtype": dtype, "backend": backend, "dataset": name,
        "template": template_name, "template_text": template, "provenance": "profile",
    }
    store = CountStore.empty(langs, runner.layers, runner.neurons, meta)
    if existing is not None:
        check_compatible(existing, store, what=f"{out} with this run (it was made by another model or setting)")
        store = existing
    for lang in langs:
        store = store.with_language(lang)

    say = sayer(opts.progress)
    resp_path = Path(opts.responses) if opts.responses else responses.path_beside(out)
    questions = responses.prepare(
        questions, runner.tokenizer, template, resp_path, runner=runner, n=opts.samples,
        temperature=opts.temperature, top_p=opts.top_p, max_new_tokens=opts.max_new_tokens, seed=opts.seed,
        progress=lambda total: Bar(opts.progress, total, "sample", "question"),
    )
    samples = responses.samples(questions)  # compact int32 token arrays
    del questions  # host memory holds tokens once, never activations: it stays flat while counting
    ledger = _Ledger(store, samples, out)
    todo = [s for s in samples if not ledger.is_done(s)]
    todo_tokens = sum(len(s.response) for s in todo)
    say(f"profiling {todo_tokens:,} response tokens of {len(todo):,} samples "
        f"({len(samples) - len(todo):,} already counted) with {backend} on {runner.device} -> {out}")
    last_save = time.monotonic()
    with Bar(opts.progress, todo_tokens, "count", "tok") as bar:
        for chunk in chunks(todo, 8 * getattr(runner, "token_budget", 16384)):
            counts, tokens = runner.count(chunk, store.languages)
            store.counts += counts
            store.tokens += tokens
            ledger.mark(chunk)
            bar.update(int(tokens.sum()))
            if time.monotonic() - last_save > opts.checkpoint_every:
                store.complete = False
                save_store(store, out)
                last_save = time.monotonic()
    store.complete = ledger.complete()
    save_store(store, out)
    say(f"wrote {out} (responses: {resp_path})")
    return out


class _Ledger:
    """Which samples the store has counted, per language (its manifest, kept in step)."""

    def __init__(self, store: CountStore, samples, out):
        self.store, self.by_lang, self.pos = store, {}, {}
        for s in samples:
            group = self.by_lang.setdefault(s.lang, [])
            self.pos[s.key] = len(group)
            group.append(s)
        self.source, self.done = {}, {}
        for lang, group in self.by_lang.items():
            source = responses.digest(group)
            others = [p["source"] for p in store.samples.get(lang, []) if p["source"] != source]
            if others:
                raise LnaError(f"{out} already holds {lang} counts of other samples ({others[0]}); "
                               "profile into a new --out and combine them with `lna merge`")
            self.source[lang] = source
            self.done[lang] = store.done_mask(lang, source, len(group)).copy()

    def is_done(self, s) -> bool:
        return bool(self.done[s.lang][self.pos[s.key]])

    def mark(self, chunk) -> None:
        for s in chunk:
            self.done[s.lang][self.pos[s.key]] = True
        for lang in {s.lang for s in chunk}:
            self.store.mark_done(lang, self.source[lang], len(self.done[lang]), self.done[lang])

    def complete(self) -> bool:
        return all(d.all() for d in self.done.values())

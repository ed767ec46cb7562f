"""lna-align: sample -> score -> pairs -> train, each stage a file in the output folder.

    DIR/responses.jsonl   sampled responses of every language (lna's responses format)
    DIR/scores.jsonl      per non-pivot question: every response's per-reference values and scores
    DIR/pairs.jsonl       preference pairs, each with its split (train / dev)
    DIR/checkpoints/step-N/  merged models; DIR/trainer/ the latest trainer state; DIR/train_log.jsonl

A rerun resumes: sampling and scoring append per batch of questions and skip what the file
holds; training resumes from the trainer's last save. `stop_after` ends after a stage; a
file given for a stage (responses, scores, pairs) replaces that stage and those before it.
"""
from dataclasses import dataclass, field
from pathlib import Path

from lna.align.train import TrainSettings
from lna.align import STAGE_FIX
from lna.core import lock
from lna.core.atomic import missing_parents, remove_empty
from lna.core.errors import LnaError
from lna.runners.options import RunnerOptions, resolve

STAGES = ("sample", "score", "pairs", "train")


@dataclass(kw_only=True)
class Options(RunnerOptions):
    langs: str
    out: str
    pivot: str = "en"
    dataset: str = "mgsm"
    limit: int | None = None
    stop_after: str = "train"
    responses: str | None = None  # bring your own: replaces sampling
    scores: str | None = None  # replaces sampling and scoring
    pairs: str | None = None  # replaces everything before training
    # sampling: NJUNLP/MAPO Preprocess/sampling.sh (vllm_sampling.py: n 20, temperature 0.8, 512 tokens)
    samples: int = 20
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    # scoring
    scorer: str = "facebook/nllb-200-distilled-600M"
    scorer_dtype: str = "float32"
    score: str = "clean"  # which score ranks the pairs: clean | released
    # pairs
    extraction: str = "lna"  # how correctness is read: lna | mapo (lna.evaluation.answers, as lna-eval)
    max_pairs: int | None = 10000
    dev_every: int = 10
    # training
    train: TrainSettings = field(default_factory=TrainSettings)
    save_dtype: str | None = None
    progress: bool = True


def run(o: Options) -> list[Path]:
    """Run the stages from the first one needed to `o.stop_after`; returns the merged checkpoints."""
    from lna.core import runs

    if o.stop_after not in STAGES:
        raise LnaError(f"unknown stage {o.stop_after!r}: use one of {', '.join(STAGES)}")
    o.train.check()  # before hours of sampling and scoring, not after
    out = runs.out_folder(o.out, fix="give an output folder")
    made = [] if out.exists() else [out, *missing_parents(out)]
    with lock.scope():
        lock.acquire(out, "run folder")
        out.mkdir(parents=True, exist_ok=True)
        try:
            return _stages(o, out)
        except BaseException:
            remove_empty(made)  # an early error leaves no empty -o folder behind
            raise


def _stages(o: Options, out: Path) -> list[Path]:
    from lna.core import jsonl
    from lna.align import pairs as pairs_mod, score as score_mod
    from lna.align.train import checkpoints, train
    from lna.core.languages import parse_langs
    from lna.core.progress import Bar, sayer

    say = sayer(o.progress)
    pivot = parse_langs(o.pivot)[0]
    langs = [x for x in parse_langs(o.langs) if x != pivot]
    if not langs:
        raise LnaError(f"--langs names only the pivot {pivot}: give the languages to align (e.g. zh,de)")
    first = "train" if o.pairs else "pairs" if o.scores else "score" if o.responses else "sample"
    stop = STAGES.index(o.stop_after)
    if STAGES.index(first) > stop:
        raise LnaError(f"--stop-after {o.stop_after}: the file given replaces that stage; nothing to do")

    # resolved once, where a stage needs the model (not to pair given scores)
    info = resolve(o) if first in ("sample", "score") or stop == 3 else None
    scored = None
    if first in ("sample", "score"):
        questions = _sample(o, info, out, langs, pivot, say) if first == "sample" else _given(o, info, langs, pivot)
        if stop == 0:
            return []
        def translator():  # loaded only when something is left to score
            return score_mod.Translator(o.scorer, device=o.device, dtype=o.scorer_dtype, token_budget=o.token_budget)

        settings = {"model": o.scorer, "dtype": o.scorer_dtype, "max_length": score_mod.MAX_LENGTH,
                    "released_batch": score_mod.RELEASED_BATCH}
        path = out / "scores.jsonl"
        say(f"score: {o.scorer} ({o.scorer_dtype}), responses against their {pivot} references -> {path}")
        scored = score_mod.score(questions, pivot, path, translator=translator, settings=settings,
                                 progress=lambda total: Bar(o.progress, total, "score", "ref"))
    elif first == "pairs":
        scored = [r for r in jsonl.read(o.scores, "scores", STAGE_FIX) if r.get("lang") in langs]
        _require(scored, o.scores, ("key", "lang", "qid", "prompt", "answer", "responses"), "scores")
    if stop == 1:
        return []
    if scored is not None:
        pairs = pairs_mod.extract(scored, score=o.score, extraction=o.extraction, max_pairs=o.max_pairs, dev_every=o.dev_every, seed=o.seed)
        jsonl.write(out / "pairs.jsonl", pairs)
        say(f"{pairs_mod.summary(pairs)} ({o.score} scores) -> {out / 'pairs.jsonl'}")
    else:
        pairs = [p for p in jsonl.read(o.pairs, "pairs", STAGE_FIX) if p.get("lang") in langs]
        _require(pairs, o.pairs, ("split", "lang", "prompt", "chosen", "rejected"), "pairs")
    if stop == 2:
        return []
    found = train(o.model, pairs, out, o.train, device=o.device, save_dtype=o.save_dtype, progress=o.progress, say=say,
                  revision=o.revision, info=info)
    say(f"checkpoints: {', '.join(str(p) for p in found) or 'none'}")
    return checkpoints(out)


def _require(recs: list, path, keys: tuple, what: str) -> None:
    if not recs:
        raise LnaError(f"{path}: no {what} records of the languages asked for")
    missing = [k for k in keys if k not in recs[0]]
    if missing:
        raise LnaError(f"{path}: {what} records need {', '.join(missing)} (see lna-align --help)")


def _load(o: Options, info, spec: str, langs: list, pivot: str) -> tuple[list, object, object]:
    """(questions of `spec` with their prompts, tokenizer, template): the tokenizer decides
    the default template (chat where it has a chat template)."""
    from dataclasses import replace

    from lna.inputs import data
    from lna.models.loading import load_tokenizer
    from lna.core.config import template_for

    _, questions = data.load(spec, ",".join([*langs, pivot]), limit=o.limit)
    tokenizer = load_tokenizer(info)
    _, template = template_for(o.model, o.template, tokenizer)
    return [replace(q, prompt=q.render(template)) for q in questions], tokenizer, template


def _given(o: Options, info, langs: list, pivot: str) -> list:
    questions = _load(o, info, o.responses, langs, pivot)[0]
    empty = [q.key for q in questions if not q.responses]
    if empty:
        raise LnaError(f"{o.responses}: {empty[0]} has no responses ({len(empty)} questions without); "
                       "give a file with responses for every question, or drop --responses to sample them")
    return questions


def _sample(o: Options, info, out: Path, langs: list, pivot: str, say) -> list:
    """Stage 1: the dataset's questions with n sampled responses each (lna.inputs.responses.prepare),
    kept in DIR/responses.jsonl; the model loads only if something is left to sample."""
    from lna.inputs import responses
    from lna.core.progress import Bar
    from lna.runners.options import open_runner

    for key in ("samples", "max_new_tokens"):
        if getattr(o, key) < 1:
            raise LnaError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(o, key)}")
    questions, tokenizer, template = _load(o, info, o.dataset, langs, pivot)
    path = out / "responses.jsonl"
    need = sum(1 for q in questions if not q.responses)
    say(f"sample: {need:,} of {len(questions):,} questions need responses ({o.samples} each, temperature "
        f"{o.temperature}, up to {o.max_new_tokens} tokens; those {path.name} holds are kept) -> {path}")

    class Lazy:  # the model loads on the first batch that needs sampling
        runner = None

        def generate(self, *args, **kw):
            if self.runner is None:
                self.runner = open_runner(o, info).runner
            return self.runner.generate(*args, **kw)

    return responses.prepare(questions, tokenizer, template, path, runner=Lazy(), n=o.samples,
                             temperature=o.temperature, top_p=o.top_p, max_new_tokens=o.max_new_tokens,
                             seed=o.seed, progress=lambda total: Bar(o.progress, total, "sample", "question"))

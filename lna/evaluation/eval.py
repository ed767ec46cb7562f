"""lna-eval: multilingual math accuracy per language (the study's Tables 1 and 5).

Two sources of responses:
  --model M            the model answers the dataset's questions (greedy by default, as
                       accuracy tables are; --samples/--temperature to sample), through the
                       same runners and responses file as lna-profile: DIR/responses.jsonl,
                       appended a batch at a time, so a killed run resumes where it stopped;
  --responses FILE     a responses file scored as it is (no model is loaded): lna-profile's
                       X.responses.jsonl (the accuracy of exactly the responses whose neurons
                       were counted) or the study's JSONL ({"lang", "instruction",
                       "answers": [{"generated"}], "answer"}).
Writes DIR/accuracy.json, DIR/verdicts.jsonl (one line per response: what was read from it
and whether it is right), DIR/accuracy.csv/.md (the paper's layout) and DIR/accuracy.png,
all or none. `tabulate` combines several runs' accuracy.json into one table.
"""
import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from lna.evaluation import accuracy, answers

from lna.core import runs

from lna.inputs import data, responses
from lna.core.atomic import staged_dir
from lna.core.errors import LnaError
from lna.core.progress import Bar, sayer
from lna.reports.tables import row_names
from lna.runners.options import RunnerOptions

RESPONSES = "responses.jsonl"
# Tokens per generation batch (rows x (prompt + max new tokens)) on every device, unless
# --token-budget says otherwise. The runners' CPU default (2048) is sized for force-decoding's
# forwards; under it a greedy answer of 1024 tokens went one question at a time, while a CPU
# decodes 8 rows in about twice the time of one (benches/results/eval_generate_cpu.json).
GENERATE_BUDGET = 16384


@dataclass(kw_only=True)
class Options(RunnerOptions):
    out: str
    model: str | None = None  # with --responses: only names the row
    dataset: str | None = None  # default mgsm when sampling; with --responses: reference answers only
    langs: str | None = "all"
    responses: str | None = None
    name: str | None = None  # row label in the tables (default: the model's or file's name)
    extraction: str = "lna"  # lna | mapo (the released evaluation)
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024  # the study's vllm_test.py: max_tokens 1024
    seed: int = 0
    limit: int | None = None  # questions per language (quick runs)
    progress: bool = True


def run(opts: Options) -> dict:
    """Sample (or read) responses, score them, write the outputs; returns accuracy.json's dict."""
    say = sayer(opts.progress)
    out = runs.out_folder(opts.out)
    if opts.extraction not in answers.METHODS:
        raise LnaError(f"unknown --extraction {opts.extraction!r}: use {' or '.join(answers.METHODS)}")
    if opts.responses:
        about, questions = _given(opts, say)
    else:
        about, questions = _sampled(opts, out, say)

    where = opts.responses or str(out / RESPONSES)
    verdicts, tallies = accuracy.score(questions, opts.extraction, where=where)
    result = accuracy.summarize(tallies, **about, extraction=opts.extraction,
                                scored="first response" if opts.extraction == "mapo" else "every response")
    with _writing(out), staged_dir(out) as tmp:
        with open(tmp / "verdicts.jsonl", "w", encoding="utf-8") as fh:
            for v in verdicts:
                fh.write(json.dumps(v, ensure_ascii=False) + "\n")
        accuracy.write_tables({result["name"]: result}, tmp, title=f"{result['name']}: accuracy ({result['dataset']})")
        (tmp / "accuracy.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
    say(f"wrote {', '.join(files)} to {out}")
    return result


def tabulate(sources, out, names=None, title: str = "") -> tuple[list, str]:
    """One table (CSV, Markdown, figure) of several lna-eval results, rows in the given order."""
    if not sources:
        raise LnaError("--table needs accuracy.json files or lna-eval output folders")
    results = [accuracy.load(s) for s in sources]
    labels = row_names(names, [r.get("name") or r.get("model") or Path(str(s)).stem for r, s in zip(results, sources)],
                       shown=",".join(names or ()))
    by_name = dict(zip(labels, results))
    with _writing(out), staged_dir(out) as tmp:
        files = accuracy.write_tables(by_name, tmp, title=title)
    return files, accuracy.markdown(*accuracy.table(by_name))


# -- responses ------------------------------------------------------------------------------------
def _given(opts: Options, say) -> tuple[dict, list]:
    """A responses file, scored as it is; reference answers it lacks come from --dataset."""
    path = Path(opts.responses)
    if not path.is_file():
        raise LnaError(f"--responses {opts.responses}: no such file (lna-profile writes X.responses.jsonl beside "
                       "its store; lna-eval DIR/responses.jsonl)")
    _, questions = data.load(str(path), opts.langs, limit=opts.limit)
    empty = [q.key for q in questions if not q.responses]
    if empty:
        raise LnaError(f"{path}: {len(empty)} questions have no response (first: {empty[0]}); score a file with "
                       "responses, or sample them with --model instead of --responses")
    if opts.dataset:
        _, reference = data.load(opts.dataset)
        golds = {q.key: q.answer for q in reference}
        questions = [q if str(q.answer).strip() else replace(q, answer=golds.get(q.key, "")) for q in questions]
    say(f"scoring {sum(len(q.responses) for q in questions):,} responses to {len(questions):,} questions of {path}")
    name = opts.name or (Path(opts.model.rstrip("/")).name if opts.model else _stem(path))
    return {"name": name, "model": opts.model, "dataset": opts.dataset or path.stem, "source": str(path),
            "sampling": None}, questions


def open_model(opts: Options):
    """The runner (lna.runners.options.Opened) that answers: generation batches under
    GENERATE_BUDGET unless --token-budget is given; then the template, which the tokenizer
    decides (chat where it has one)."""
    from lna.runners.options import open_runner

    return open_runner(replace(opts, token_budget=opts.token_budget or GENERATE_BUDGET))


def _sampled(opts: Options, out: Path, say) -> tuple[dict, list]:
    """The model's own responses to the dataset's questions, sampled into DIR/responses.jsonl."""
    if not opts.model:
        raise LnaError("give --model M to sample responses, or --responses FILE to score a responses file")
    if opts.temperature < 0 or not 0 < opts.top_p <= 1:
        raise LnaError(f"--temperature must be >= 0 and --top-p in (0, 1], got {opts.temperature} and {opts.top_p}")
    if opts.temperature == 0 and opts.samples > 1:
        raise LnaError(f"--samples {opts.samples} with --temperature 0: greedy decoding gives one response per "
                       "question; give a temperature above 0 to sample several")
    dataset = opts.dataset or "mgsm"
    name, questions = data.load(dataset, opts.langs, limit=opts.limit)
    # The data's own responses (the demo's worked answers, a responses file's) are not the
    # model's: it answers every question itself. Reference answers are checked before any work.
    questions = [replace(q, responses=[], response_ids=None, prompt_ids=None, tokenizer=None) for q in questions]
    for q in questions:
        accuracy.gold_of(q, dataset)
    model = open_model(opts)
    runner, backend, dtype, template = model.runner, model.backend, model.dtype, model.template
    sampling = {"n": opts.samples, "temperature": opts.temperature, "top_p": opts.top_p,
                "max_new_tokens": opts.max_new_tokens, "seed": opts.seed}
    identity = {"model": opts.model, **model.identity, "template": template.applied}
    runs.claim(out, identity, "responses", [RESPONSES])
    path = out / RESPONSES
    say(f"answering {len(questions):,} questions ({opts.samples} per question, "
        f"{'greedy' if opts.temperature == 0 else f'temperature {opts.temperature}'}, "
        f"up to {opts.max_new_tokens} new tokens) with {backend} on {runner.device} -> {path}")
    with _writing(out):
        questions = responses.prepare(
            questions, runner.tokenizer, template, path, runner=runner, n=opts.samples, temperature=opts.temperature,
            top_p=opts.top_p, max_new_tokens=opts.max_new_tokens, seed=opts.seed,
            progress=lambda total: Bar(opts.progress, total, "answer", "question"),
        )
    name_ = opts.name or Path(opts.model.rstrip("/")).name.replace("lna:", "")
    return {"name": name_, "model": opts.model, "model_fingerprint": runner.fingerprint, "dataset": name,
            "source": str(path), "template": model.template_name, "backend": backend, "dtype": dtype,
            "sampling": sampling}, questions


@contextlib.contextmanager
def _writing(out: Path):
    """A full disk or a read-only folder is the user's to fix: one line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise LnaError(f"{err.filename or out}: cannot write ({err.strerror or err}); free some space or "
                       "choose another -o (finished work is kept: rerun the same command)") from None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl", ".json", ".responses"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name

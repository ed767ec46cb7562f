"""Accuracy per language from scored responses, and the paper's table (Tables 1 and 5).

A question's responses are each scored right or wrong (lna.evaluation.answers). Per language:
`accuracy` is the mean over questions of the fraction of its responses that are right (with
one response per question, the fraction of questions answered right), `at_least_one` the
share of questions with at least one right response; `average` is the mean over languages
(the paper's Avg.). Fractions are computed exactly (rationals) and rounded once to float.
"""
import json
from fractions import Fraction
from pathlib import Path

from lna.evaluation import answers

from lna.core import languages
from lna.core.errors import LnaError

# The paper's column order (Tables 1 and 5); other languages follow, then Avg.
PAPER_ORDER = ("bn", "th", "sw", "ja", "zh", "ru", "de", "es", "fr", "en")


def paper_order(codes) -> list:
    codes = list(dict.fromkeys(codes))
    return [c for c in PAPER_ORDER if c in codes] + sorted(c for c in codes if c not in PAPER_ORDER)


def gold_of(q, where: str) -> float:
    """A question's reference answer as a number, or a one-line error naming it."""
    gold = answers.parse_gold(q.answer)
    if gold is None:
        what = f"reference answer {q.answer!r} is not a number" if str(q.answer).strip() else "has no reference answer"
        raise LnaError(f"{where}: {q.key} {what}; give records an 'answer' (a number), or --dataset mgsm|msvamp|PATH "
                       "for the answers of an lna responses file")
    return gold


def score(questions, method: str = "lna", *, where: str = "data") -> tuple[list, dict]:
    """(verdicts, per-language tallies) of `questions` with responses. Method "mapo" scores the
    first response of each question only, as the released evaluation does."""
    verdicts, tallies = [], {}
    for q in questions:
        if not q.responses:
            raise LnaError(f"{where}: {q.key} has no response to score")
        gold = gold_of(q, where)
        scored = q.responses[:1] if method == "mapo" else q.responses
        right = 0
        for j, text in enumerate(scored):
            ok = answers.is_correct(text, q.answer, q.lang, method=method)
            right += ok
            verdicts.append({"key": q.key, "lang": q.lang, "sample": j, "answer": q.answer, "gold": gold,
                             "extracted": answers.extract_answer(text, q.lang, method=method),
                             "correct": bool(ok), "response": text})
        t = tallies.setdefault(q.lang, {"questions": 0, "samples": 0, "correct": 0, "sum": Fraction(0), "any": 0,
                                        "n": set()})
        t["questions"] += 1
        t["samples"] += len(scored)
        t["correct"] += right
        t["sum"] += Fraction(right, len(scored))
        t["any"] += right > 0
        t["n"].add(len(scored))
    return verdicts, tallies


def summarize(tallies: dict, **about) -> dict:
    """The accuracy.json contract: {"languages", "accuracy", "average", "samples", "model", ...}."""
    langs = paper_order(tallies)
    acc = {c: tallies[c]["sum"] / tallies[c]["questions"] for c in langs}
    any_ = {c: Fraction(tallies[c]["any"], tallies[c]["questions"]) for c in langs}
    non_en = [c for c in langs if c != "en"]
    ns = {n for c in langs for n in tallies[c]["n"]}
    return {
        **about,
        "languages": langs,
        "accuracy": {c: float(acc[c]) for c in langs},
        "average": float(sum(acc.values()) / len(langs)),
        "average_non_english": float(sum(acc[c] for c in non_en) / len(non_en)) if non_en and "en" in langs else None,
        "samples": {c: tallies[c]["samples"] for c in langs},
        "questions": {c: tallies[c]["questions"] for c in langs},
        "correct": {c: tallies[c]["correct"] for c in langs},
        "samples_per_question": ns.pop() if len(ns) == 1 else None,
        "at_least_one": {c: float(any_[c]) for c in langs},
        "average_at_least_one": float(sum(any_.values()) / len(langs)),
    }


# -- reading results back ------------------------------------------------------------------
def load(source) -> dict:
    """An accuracy.json (or a folder holding one), checked enough to tabulate."""
    path = Path(source)
    if path.is_dir():
        path = path / "accuracy.json"
    if not path.is_file():
        raise LnaError(f"{source}: no accuracy.json there; give files or folders written by lna-eval")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LnaError(f"{path}: not valid JSON; rerun lna-eval to write it again") from None
    ok = isinstance(result, dict) and isinstance(result.get("accuracy"), dict) and isinstance(result.get("languages"), list)
    if not ok or not all(isinstance(result["accuracy"].get(c), (int, float)) for c in result["languages"]):
        raise LnaError(f"{path}: not an lna-eval accuracy.json (needs languages, accuracy per language, average)")
    for c in result["languages"]:
        languages.get(c)
    return result


# -- the paper's table -------------------------------------------------------------------------
def table(results: dict) -> tuple[list, list]:
    """(header, rows) in percent: one row per {name: accuracy.json}, columns in the paper's
    order, then Avg.; where a result has several samples per question, a second row gives the
    share of questions with at least one right response."""
    cols = paper_order(c for r in results.values() for c in r["languages"])
    header = ["model", *cols, "Avg."]
    rows = []
    for name, r in results.items():
        n = r.get("samples_per_question")
        variants = [(name, "accuracy", "average")]
        if r.get("at_least_one") and (n is None or n > 1):
            variants.append((f"{name} (at least one of {n or 'n'})", "at_least_one", "average_at_least_one"))
        for label, per_lang, avg in variants:
            rows.append([label, *[_pct(r[per_lang].get(c)) for c in cols], _pct(r.get(avg))])
    return header, rows


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def markdown(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cell or "-" for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(results: dict, folder, title: str = "") -> list:
    """accuracy.csv, accuracy.md and accuracy.png (grouped bars) of {name: result} into `folder`."""
    from lna.reports import plots
    from lna.reports.tables import write_csv

    folder = Path(folder)
    header, rows = table(results)
    write_csv(folder / "accuracy.csv", header, rows)
    (folder / "accuracy.md").write_text(markdown(header, rows), encoding="utf-8")
    series = {row[0]: [float(v) if v else float("nan") for v in row[1:]] for row in rows}
    plots.accuracy_bars(series, header[1:], folder / "accuracy.png", title=title)
    return ["accuracy.csv", "accuracy.md", "accuracy.png"]

"""Stage 3, pairs: preference pairs from the scored responses, as NJUNLP/MAPO
Preprocess/extract_dpo_data.py builds them.

Per non-pivot question, its responses are sorted by score, highest first (a stable sort, as
Python's `sorted(..., reverse=True)` there). Each response that reaches the gold answer is
*chosen* against every response after it whose score differs (so the chosen one scores
strictly higher) and whose text differs once calculator annotations are dropped. The
rejected response may itself be correct, as there.

Split as there: questions are grouped by the question they translate (their id), in order of
first appearance, and every `dev_every`-th group (the 1st, 11th, ...) goes to the dev split.
Then at most `max_pairs` train pairs per language are kept (the study's 10,000), a seeded
random subset in file order.

Correctness is lna.evaluation.answers.is_correct, as lna-eval judges: the last number, read in the
response's language, equals the gold answer (`extraction="lna"`); `extraction="mapo"` takes the
released reading (no minus sign, "no number" read as 0), within lna-eval's released
tolerance 1e-2 where extract_dpo_data.py used 1e-3 (the two differ only for answers that
far from an integer). Responses with no score (a question without pivot references) take
no part (the script would have divided by zero).
"""
import numpy as np

from lna.evaluation.answers import is_correct
from lna.core.errors import LnaError

from lna.align import texts

SCORES = ("clean", "released")


def question_pairs(rec: dict, score: str = "clean", extraction: str = "lna") -> list[dict]:
    """The pairs of one scored question (one record of the scores file)."""
    if score not in SCORES:
        raise LnaError(f"unknown score {score!r}: use {' or '.join(SCORES)}")
    if str(rec.get("answer", "")).strip() == "":
        raise LnaError(f"{rec['key']}: no gold answer; pairs need one (the dataset's answer field)")
    field = f"score_{score}"
    rows = [(j, r) for j, r in enumerate(rec["responses"]) if r.get(field) is not None]
    rows = sorted(rows, key=lambda x: x[1][field], reverse=True)
    out = []
    for a in range(len(rows) - 1):
        ja, ra = rows[a]
        if not is_correct(ra["text"], rec["answer"], rec["lang"], method=extraction):
            continue
        for jb, rb in rows[a + 1:]:
            if ra[field] != rb[field] and not texts.same_after_annotations(ra["text"], rb["text"]):
                out.append({"lang": rec["lang"], "qid": rec["qid"], "key": rec["key"], "prompt": rec["prompt"],
                            "chosen": ra["text"], "rejected": rb["text"], "chosen_index": ja, "rejected_index": jb,
                            "score_chosen": ra[field], "score_rejected": rb[field]})
    return out


def extract(score_records: list[dict], *, score: str = "clean", extraction: str = "lna",
            max_pairs: int | None = 10000, dev_every: int = 10, seed: int = 0) -> list[dict]:
    """All pairs, each with "split": "train" or "dev"."""
    groups: dict = {}  # qid -> pairs, in order of first appearance
    for rec in score_records:
        groups.setdefault(rec["qid"], []).extend(question_pairs(rec, score, extraction))
    out = []
    for position, group in enumerate(groups.values()):
        split = "dev" if dev_every and position % dev_every == 0 else "train"
        out += [{"split": split, **p} for p in group]
    if max_pairs is not None:
        rng = np.random.default_rng(seed)
        drop = set()
        for lang in dict.fromkeys(p["lang"] for p in out):
            idx = [i for i, p in enumerate(out) if p["split"] == "train" and p["lang"] == lang]
            if len(idx) > max_pairs:
                keep = set(rng.choice(idx, size=max_pairs, replace=False).tolist())
                drop.update(i for i in idx if i not in keep)
        out = [p for i, p in enumerate(out) if i not in drop]
    return out


def summary(pairs: list[dict]) -> str:
    langs = list(dict.fromkeys(p["lang"] for p in pairs))
    parts = []
    for lang in langs:
        n = {s: sum(1 for p in pairs if p["lang"] == lang and p["split"] == s) for s in ("train", "dev")}
        parts.append(f"{lang} {n['train']:,} train / {n['dev']:,} dev")
    return "pairs: " + (", ".join(parts) if parts else "none")

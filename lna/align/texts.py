"""Texts as the released MAPO scripts see them (NJUNLP/MAPO, Preprocess/, commit 82fbc45).

lna follows the scripts here, and says where it does not:
- source (the scored non-pivot response), as PPL_batched.py: strip, cut at "####", strip,
  then drop GSM8K-style calculator annotations `<<...>>` (in that order, so a removed
  annotation may leave a trailing space, as there);
- reference (a pivot response): extract_mutliL_en.py cuts at "####", strips and drops
  annotations, removes duplicates and responses with a repeated line (its filter of
  degenerate loops); PPL_batched.py then drops annotations, cuts and strips once more. The scripts dedupe through a
  Python set, whose order changes from run to run; lna keeps the first occurrence, so the
  order of references (which the released batch-padding artefact depends on) is fixed;
- pair texts differ when they differ after dropping annotations (extract_dpo_data.py).
Questions pair across languages by their id, as the scripts pair them by English question.
"""
import re
from collections import Counter

from lna.core.errors import LnaError

_ANNOTATION = re.compile("<<.*?>>")  # the scripts' pattern: one line, shortest match


def drop_annotations(text: str) -> str:
    return _ANNOTATION.sub("", text)


def source_text(response: str) -> str:
    """The non-pivot response as PPL_batched.py feeds it to the translation model."""
    return drop_annotations(response.strip().split("####")[0].strip())


def _collected(response: str) -> str:
    """extract_mutliL_en.py's preprocess of a pivot response."""
    return drop_annotations(response.split("####")[0].strip())


def reference_text(collected: str) -> str:
    """PPL_batched.py's label text of a collected pivot response."""
    return drop_annotations(collected).split("####")[0].strip()


def has_repeated_line(text: str) -> bool:
    """extract_mutliL_en.py's loop filter: some line (blank lines collapsed once) occurs twice."""
    lines = text.replace("\n\n", "\n").split("\n")
    return any(n >= 2 for n in Counter(lines).values())


def references(pivot_responses: list) -> list[str]:
    """The pivot responses of one question, as references: cleaned, deduplicated (first
    occurrence kept), those with a repeated line dropped."""
    kept = []
    for r in pivot_responses:
        t = _collected(r)
        if t not in kept and not has_repeated_line(t):
            kept.append(t)
    return [reference_text(t) for t in kept]


def same_after_annotations(a: str, b: str) -> bool:
    return drop_annotations(a) == drop_annotations(b)


def question_id(key: str) -> str:
    """The id a question shares with its versions in other languages: the last part of its
    key ("mgsm/zh/17" -> "17"; a JSONL record's "id")."""
    return key.rsplit("/", 1)[-1]


def pivot_index(questions, pivot: str) -> dict:
    """{question id: the pivot-language question}; an id given twice is an error."""
    out = {}
    for q in questions:
        if q.lang == pivot:
            qid = question_id(q.key)
            if qid in out:
                raise LnaError(f"two {pivot} questions have the id {qid!r} ({out[qid].key}, {q.key}); "
                               "give each question of a language its own 'id'")
            out[qid] = q
    return out

"""The schema of the JSONL records lna reads (datasets, its responses files), checked before
anything is written: a wrong type, a missing field or a bad token id is one line naming the
file, the line and the field, never a traceback and never a silent reading (a string given
as the list of answers is not 11 one-character responses; a float id is not a token).

Token ids are checked here for their form (lists of integers >= 0, one list a response);
against the tokenizer (in its range, and decoding to the text they come with) by
lna.inputs.responses, which has the tokenizer.
"""
from lna.core.errors import LnaError

RESPONSE_FIELDS = ("answers", "responses", "response")


def _fail(where, line, field, problem: str) -> None:
    raise LnaError(f"{where}:{line}: {field} {problem}; fix that record or leave it out")


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__.replace("dict", "object").replace("list", "array")


def text(rec: dict, field: str, where, line, *, required: bool = False, numbers: bool = False) -> None:
    """rec[field] is a string (or a number where `numbers`); absent or null is fine unless required."""
    if field not in rec or rec[field] is None:
        if required:
            _fail(where, line, f"'{field}'", "is missing")
        return
    value, ok = rec[field], (str, int, float) if numbers else str
    if not isinstance(value, ok) or isinstance(value, bool):
        _fail(where, line, f"'{field}'", f"must be a string{' or a number' if numbers else ''}, got "
                                         f"{_kind(value)} {_short(value)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def ids(value, where, line, field: str) -> list:
    """A list of token ids: integers >= 0 (no floats, no booleans)."""
    if not isinstance(value, list):
        _fail(where, line, f"'{field}'", f"must be an array of token ids, got {_kind(value)}")
    for j, t in enumerate(value):
        if not isinstance(t, int) or isinstance(t, bool):
            _fail(where, line, f"'{field}[{j}]'", f"must be an integer token id, got {_kind(t)} {_short(t)}")
        if t < 0:
            _fail(where, line, f"'{field}[{j}]'", f"is a negative token id ({t})")
    return value


def responses_of(rec: dict, where, line) -> list[str]:
    """The responses a dataset record gives: "answers" [{"generated": text} or text, ...]
    (the study's format), "responses" [text, ...] and "response" text, in that order."""
    out = []
    if "answers" in rec:
        answers = rec["answers"]
        if not isinstance(answers, list):
            _fail(where, line, "'answers'", f"must be an array of responses, got {_kind(answers)} {_short(answers)}")
        for j, a in enumerate(answers):
            if isinstance(a, dict):
                if not isinstance(a.get("generated"), str):
                    _fail(where, line, f"'answers[{j}]'", "must hold the response as a string in 'generated' "
                                                          f"(got keys {sorted(a)})")
                out.append(a["generated"])
            elif isinstance(a, str):
                out.append(a)
            else:
                _fail(where, line, f"'answers[{j}]'", f"must be a string or {{\"generated\": ...}}, got {_kind(a)}")
    if "responses" in rec:
        given = rec["responses"]
        if not isinstance(given, list):
            _fail(where, line, "'responses'", f"must be an array of strings, got {_kind(given)} {_short(given)}")
        for j, r in enumerate(given):
            if not isinstance(r, str):
                _fail(where, line, f"'responses[{j}]'", f"must be a string, got {_kind(r)} {_short(r)}")
        out += given
    if "response" in rec:
        text(rec, "response", where, line, required=True)
        out.append(rec["response"])
    return out


def token_ids(rec: dict, where, line, n_responses: int) -> None:
    """prompt_ids and response_ids, where given: their form, and one list a response."""
    if rec.get("prompt_ids") is not None:
        ids(rec["prompt_ids"], where, line, "prompt_ids")
    if rec.get("response_ids") is not None:
        given = rec["response_ids"]
        if not isinstance(given, list):
            _fail(where, line, "'response_ids'", f"must be an array of token-id arrays, got {_kind(given)}")
        if len(given) != n_responses:
            _fail(where, line, "'response_ids'", f"has {len(given)} token lists for {n_responses} responses")
        for j, r in enumerate(given):
            ids(r, where, line, f"response_ids[{j}]")
    text(rec, "tokenizer", where, line)
    text(rec, "template", where, line)


def check_dataset_record(rec: dict, where, line) -> list[str]:
    """A record of a dataset JSONL; returns its responses."""
    text(rec, "lang", where, line, required=True)
    for field in ("instruction", "prompt", "query", "question", "key"):
        text(rec, field, where, line)
    text(rec, "answer", where, line, numbers=True)
    if "id" in rec and rec["id"] is not None and (not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool)):
        _fail(where, line, "'id'", f"must be a string or an integer, got {_kind(rec['id'])} {_short(rec['id'])}")
    responses = responses_of(rec, where, line)
    token_ids(rec, where, line, len(responses))
    return responses


def check_responses_record(rec: dict, where, line) -> None:
    """A record of lna's responses file (lna.inputs.responses): the fields lna wrote."""
    for field in ("key", "lang", "prompt", "tokenizer"):
        text(rec, field, where, line, required=True)
    for field in ("query", "answer", "template"):
        text(rec, field, where, line)
    if not isinstance(rec.get("responses"), list):
        _fail(where, line, "'responses'", f"must be an array of strings, got {_kind(rec.get('responses'))}")
    responses_of({"responses": rec["responses"]}, where, line)
    for field in ("prompt_ids", "response_ids"):
        if rec.get(field) is None:
            _fail(where, line, f"'{field}'", "is missing")
    token_ids(rec, where, line, len(rec["responses"]))
    if rec.get("sampling") is not None and not isinstance(rec["sampling"], dict):
        _fail(where, line, "'sampling'", f"must be an object, got {_kind(rec['sampling'])}")

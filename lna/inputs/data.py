"""Datasets: MGSM, MSVAMP, JSONL of prompts (with optional responses), and the demo set.

Everything becomes a list of `Question`s: one prompt in one language, with the responses
the data already has (if any). Sources:
  mgsm | msvamp   a local folder laid out like ../shared/data/{mgsm,msvamp} (found through
                  $LNA_DATA_DIR), else the Hugging Face copy (juletxara/mgsm,
                  Mathoctopus/MSVAMP) where `datasets` can load it
  demo            a small multilingual set shipped with lna (no download)
  PATH            such a folder, or a JSONL file
JSONL records: {"lang": code or English name, one of "instruction"/"prompt" (verbatim
prompt, the released study's format) or "query"/"question" (wrapped in the model's
template), optional "id", "answer", and responses as "answers": [{"generated": ...}]
(the study's format), "responses": [...] or "response": "..."; lna's responses files add
"key", "prompt_ids", "response_ids" and "tokenizer" so reruns use the exact tokens, and
"template", the prompt template that made "prompt"}.
"""
import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lna.core import languages
from lna.core.errors import LnaError
from lna.inputs import schema

HF_IDS = {"mgsm": "juletxara/mgsm", "msvamp": "Mathoctopus/MSVAMP"}


@dataclass
class Question:
    key: str  # stable id: "<dataset>/<lang>/<index or id>"
    lang: str  # language code
    query: str = ""  # the question, to be wrapped in the prompt template
    answer: str = ""  # gold answer, when known
    prompt: str | None = None  # a verbatim prompt (overrides query + template)
    responses: list = field(default_factory=list)  # responses the data already has (text)
    # token ids, where a responses file of lna's recorded them (and for which tokenizer)
    prompt_ids: list | None = None
    response_ids: list | None = None
    tokenizer: str | None = None
    template: str | None = None  # the template that made `prompt`, where lna's responses file says
    where: str | None = field(default=None, compare=False, repr=False)  # "file:line" it came from (messages)

    def render(self, template) -> str:
        """The prompt: the data's own (verbatim), else `template` (lna.core.config.Template) applied."""
        if self.prompt is not None:
            return self.prompt
        return template.render(languages.get(self.lang).name, self.query)


def load(spec: str, langs: str | None = None, limit: int | None = None) -> tuple[str, list[Question]]:
    """(dataset name, questions of the requested languages; the first `limit` of each), grouped by
    language in the order asked (`all`: the study's languages first, in the study's order)."""
    name, questions = _load_all(spec)
    available = sorted({q.lang for q in questions}, key=_study_order)
    if not questions:
        raise LnaError(f"dataset {spec!r} holds no questions")
    wanted = languages.parse_langs(langs, available)
    kept: dict = {}
    for q in questions:
        if q.lang in wanted and (limit is None or len(kept.setdefault(q.lang, [])) < limit):
            kept.setdefault(q.lang, []).append(q)
    return name, [q for lang in wanted for q in kept.get(lang, [])]  # languages in the order asked


def _study_order(code: str):
    return (languages.STUDY.index(code) if code in languages.STUDY else len(languages.STUDY), code)


def _load_all(spec: str) -> tuple[str, list[Question]]:
    if spec == "demo":
        from lna.inputs import demo

        return "demo", _parse_jsonl([json.dumps(r) for r in demo.records()], "demo")
    path = Path(spec).expanduser()
    if not path.exists() and spec in HF_IDS:
        local = Path(os.environ.get("LNA_DATA_DIR", "")) / spec
        if os.environ.get("LNA_DATA_DIR") and local.is_dir():
            path = local
        else:
            return spec, _load_hf(spec)
    if not path.exists():
        raise LnaError(f"dataset {spec!r}: no such file or folder (use mgsm, msvamp, demo, a folder or a .jsonl)")
    if path.is_file():
        return path.stem, _parse_jsonl(_read_lines(path), path.stem, path)
    if any(path.glob("mgsm_*.tsv")):
        return "mgsm", _load_files(path, "mgsm_*.tsv", "a TSV file of questions and answers", _mgsm_questions)
    if any(path.glob("test_*.json")):
        return "msvamp", _load_files(path, "test_*.json", "a JSONL file of MSVAMP questions",
                                     _msvamp_questions)
    raise LnaError(f"{path}: not a dataset folder (expected mgsm_<lang>.tsv or test_<Language>.json files)")


def _read_lines(path: Path, what: str = "a JSONL file of prompts") -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise LnaError(f"{path}: not UTF-8 text; give {what}") from None
    except OSError as err:
        raise LnaError(f"{path}: cannot read it ({err.strerror or err}); give {what}") from None


def _load_files(folder: Path, pattern: str, what: str, questions) -> list[Question]:
    """The questions of a dataset folder, one language a file (named as `pattern`, read as
    `what`), in file-name order; questions(lines, file, code) parses one file."""
    out = []
    for f in sorted(folder.glob(pattern)):
        code = _code_of_file(f)
        out += questions(_read_lines(f, what), f, code)
    return out


def _mgsm_questions(lines: list, f: Path, code: str) -> list[Question]:
    out = []
    for i, row in enumerate(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)):
        if len(row) != 2:
            raise LnaError(f"{f}:{i + 1}: expected 2 tab-separated columns (question, answer)")
        out.append(Question(f"mgsm/{code}/{i}", code, row[0], row[1].replace(",", "")))
    return out


def _msvamp_questions(lines: list, f: Path, code: str) -> list[Question]:
    out = []
    for i, line in enumerate(lines):
        if line.strip():
            rec = _json(line, f, i)
            schema.text(rec, "m_query", f, i + 1, required=True)
            schema.text(rec, "response", f, i + 1, numbers=True)
            answer = rec.get("response")
            out.append(Question(f"msvamp/{code}/{i}", code, rec["m_query"], "" if answer is None else str(answer)))
    return out


def _code_of_file(f: Path) -> str:
    try:
        return languages.code_of(f.stem.split("_", 1)[1])
    except LnaError as err:
        raise LnaError(f"{f}: the file name names no language lna knows ({err})") from None


def _load_hf(name: str) -> list[Question]:
    try:
        import datasets
    except ImportError:
        raise LnaError(
            f"dataset {name!r} is not available locally: pass --dataset PATH to a folder laid out like "
            f"MGSM/MSVAMP (or set LNA_DATA_DIR), or `pip install datasets` to load {HF_IDS[name]}"
        ) from None
    out = []
    try:
        if name == "mgsm":
            for code in ("en", "zh", "ru", "de", "fr", "es", "ja", "sw", "th", "bn", "te"):
                for i, rec in enumerate(datasets.load_dataset(HF_IDS[name], code, split="test")):
                    out.append(Question(f"mgsm/{code}/{i}", code, rec["question"], str(rec["answer_number"])))
        else:
            for lang in languages.STUDY:
                split = datasets.load_dataset(HF_IDS[name], data_files=f"test_{languages.get(lang).name}.json")
                for i, rec in enumerate(split["train"]):
                    out.append(Question(f"msvamp/{lang}/{i}", lang, rec["m_query"], str(rec["response"])))
    except Exception as err:  # hub unreachable, dataset renamed: say which and how to avoid it
        raise LnaError(f"could not load {HF_IDS[name]} ({type(err).__name__}); pass --dataset PATH to a local copy") from None
    return out


def _json(line: str, where, i: int) -> dict:
    try:
        rec = json.loads(line)
    except ValueError:
        raise LnaError(f"{where}:{i + 1}: not valid JSON") from None
    if not isinstance(rec, dict):
        raise LnaError(f"{where}:{i + 1}: expected a JSON object per line")
    return rec


def _parse_jsonl(lines, name: str, where=None) -> list[Question]:
    """Questions of JSONL lines; `name` makes their keys, `where` (the file) names them in
    messages. Each record is checked against lna.inputs.schema first."""
    where = where or name
    out, seen = [], set()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        rec = _json(line, where, i)
        if "lang" not in rec:
            raise LnaError(f"{where}:{i + 1}: record has no 'lang'")
        responses = schema.check_dataset_record(rec, where, i + 1)
        try:
            code = languages.code_of(rec["lang"])
        except LnaError as err:
            raise LnaError(f"{where}:{i + 1}: 'lang': {err}") from None
        prompt = rec.get("instruction", rec.get("prompt"))
        query = rec.get("query", rec.get("question"))
        if prompt is None and query is None:
            raise LnaError(f"{where}:{i + 1}: record needs 'instruction', 'prompt', 'query' or 'question'")
        key = rec.get("key") or f"{name}/{code}/{rec.get('id', i)}"
        if key in seen:
            raise LnaError(f"{where}:{i + 1}: duplicate id {rec.get('id', key)!r}")
        seen.add(key)
        answer = rec.get("answer")
        out.append(Question(key, code, query or "", "" if answer is None else str(answer), prompt, responses,
                            rec.get("prompt_ids"), rec.get("response_ids"), rec.get("tokenizer"),
                            rec.get("template"), where=f"{where}:{i + 1}"))
    return out

"""Responses to force-decode: given by the data, or sampled from the model once and kept.

Every prompt and response is tokenized once and written, token ids included, to a JSONL
file beside the store (`X.zarr` -> `X.responses.jsonl`), one record a question. That file
is itself a dataset lna reads (lna.inputs.data), so profiling, ablation and reruns use exactly
the same tokens. Sampling appends a batch of questions at a time; each question's responses
come from a seed of its own (the run's --seed and the question's key: lna.inputs.samples.
question_seed), so an interrupted run resumes where it stopped and samples the same, and a
question draws the same responses in any shard, batch or order of the data.
An append is whole or undone (a failed write is cut back off, an interrupt waits for it);
a torn last line that a crash left anyway is removed, with a note, and prepared again.
"""
import contextlib
import hashlib
from dataclasses import dataclass, replace
import json
from pathlib import Path

import numpy as np

from lna.core import jsonl
from lna.core.progress import note as say_note
from lna.inputs import schema
from lna.core.config import VERBATIM
from lna.inputs.data import Question
from lna.core.errors import LnaError
from lna.core.interrupts import shielded
from lna.inputs.samples import Sample, question_seed

NO_RESPONSES = ("the data has no responses; sampling them needs the model (give --responses FILE "
                "or a dataset with responses)")
BATCH_QUESTIONS = 8  # questions per sampling batch (fixed: resume must see the same batches)


def path_beside(store) -> Path:
    store = Path(store)
    stem = store.name[: -len(".zarr")] if store.name.endswith(".zarr") else store.name
    return store.with_name(f"{stem}.responses.jsonl")


def tokenizer_id(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:12]


def encode(tokenizer, text: str) -> list:
    """Token ids of a prompt (+ response): the tokenizer adds its special tokens (BOS) unless
    the text already starts with BOS, as a rendered chat template often does (no double BOS)."""
    bos = getattr(tokenizer, "bos_token", None)
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def encode_response(tokenizer, prompt: str, prompt_ids: list, response: str) -> list:
    """The response's tokens as the study gets them: tokenize(prompt + response) minus the
    prompt's tokens; on a boundary merge, the response tokenized on its own."""
    full = encode(tokenizer, prompt + response)
    if full[: len(prompt_ids)] == prompt_ids:
        return full[len(prompt_ids):]
    return tokenizer(response, add_special_tokens=False)["input_ids"]


def template_of(q: Question, template) -> str:
    """The name of the template `q`'s prompt comes from: the data's verbatim prompt is
    "verbatim" (unless lna's responses file recorded the template that made it)."""
    if q.prompt is None:
        return template.name
    return q.template or VERBATIM


def template_record(questions: list[Question], template) -> dict:
    """What the store records of the prompt format: the template name(s) applied
    ("verbatim" where the data gave the prompts) and the exact template text."""
    names = sorted({template_of(q, template) for q in questions})
    used = template.name in names and any(q.prompt is None for q in questions)
    return {"template": "+".join(names) or template.name, "template_text": template.applied if used else ""}


@dataclass
class Plan:
    """What `prepare` found: questions with token ids (None responses where still to sample),
    the batches to sample (batch index -> question indices) and how to write them."""
    questions: list
    todo: dict
    path: Path
    sampling: dict
    kept: dict
    tokenizer: object

    def known(self) -> list:
        """The questions whose responses are known before sampling (given or kept)."""
        todo = {i for idx in self.todo.values() for i in idx}
        return [q for i, q in enumerate(self.questions) if i not in todo]


def prepare(questions: list[Question], tokenizer, template, path, *, runner=None, n: int = 10,
            temperature: float = 0.7, top_p: float = 0.95, max_new_tokens: int = 512, seed: int = 0,
            progress=None, note=None) -> list[Question]:
    """Fill in token ids (and sampled responses where the data has none); write `path`.
    `template`: the lna.core.config.Template for questions without a verbatim prompt.
    `progress(total)` gives a context-managed bar (with .update(n)) for the sampling;
    `note(msg)` hears of a repaired file (default: a note on stderr, even when quiet)."""
    p = plan(questions, tokenizer, template, path, n=n, temperature=temperature, top_p=top_p,
             max_new_tokens=max_new_tokens, seed=seed, note=note)
    return sample(p, runner, progress=progress)


def plan(questions: list[Question], tokenizer, template, path, *, n: int = 10, temperature: float = 0.7,
         top_p: float = 0.95, max_new_tokens: int = 512, seed: int = 0, note=None) -> Plan:
    """The first half of `prepare`: token ids, the kept responses of `path`, what to sample."""
    tid = tokenizer_id(tokenizer)
    path = Path(path)
    kept, repeated = _read(path, note)
    sampling = {"n": n, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed}
    out = []
    for q in questions:
        prompt = q.render(template)
        rec = kept.get(q.key)
        used = template_of(q, template)
        if rec is not None and rec.get("template", used) != used:
            raise LnaError(f"{path}: holds {q.key} made with prompt template {rec['template']!r}, this run "
                           f"uses {used!r}; pass --template {rec['template']} or choose another --out")
        if rec is not None and (rec["prompt"] != prompt or rec.get("tokenizer") != tid):
            raise LnaError(f"{path}: holds {q.key} with another prompt or tokenizer; "
                           "choose another --out or delete that file")
        if not q.responses and rec is not None and rec.get("sampling") != sampling:
            raise LnaError(f"{path}: responses were sampled with {rec.get('sampling')}, not {sampling}; "
                           "choose another --out or delete that file")
        out.append(replace(_tokenize(q, tokenizer, prompt, tid), template=used))
    # Sampling goes in fixed batches of the dataset's order; a batch the file holds only in
    # part (killed mid-append) is sampled again whole (the same responses: seeds by question).
    batches: dict = {}
    for i, q in enumerate(out):
        if q.response_ids is None:
            batches.setdefault(i // BATCH_QUESTIONS, []).append(i)
    # A batch the file holds in part is sampled again whole, so its records there go first
    # (the file is rewritten without them): a key is never in the file twice.
    todo, stale = {}, []
    for b, idx in batches.items():
        if all(out[i].key in kept for i in idx):
            for i in idx:
                out[i] = _question(kept[out[i].key], path, tokenizer)
        else:
            todo[b] = idx
            stale += [out[i].key for i in idx if out[i].key in kept]
    if stale or repeated:
        for key in stale:
            del kept[key]
        jsonl.write(path, [{k: v for k, v in rec.items() if k != LINE} for rec in kept.values()])
        (note or say_note)(f"{path}: {len(stale) + repeated} records of an interrupted batch or repeated "
                           "are removed; that batch is sampled again whole")
    return Plan(out, todo, path, sampling, kept, tokenizer)


def sample(p: Plan, runner, *, progress=None, count=None) -> list[Question]:
    """The second half of `prepare`: sample `p.todo` batch by batch, appending each to the
    file; then write the rest. With `count` (lna-profile counting while sampling), each batch
    is sampled by `runner.generate_counting` (with activation sums where `count.sums`) and
    `count(questions, languages, counts, tokens[, sums, active_sums])` takes its counts right
    after its responses are appended, with no interrupt between the two: a store never holds
    counts of responses the file lacks."""
    out, todo, s = p.questions, p.todo, p.sampling
    if todo and runner is None:
        raise LnaError(NO_RESPONSES)
    sampled = {out[i].key for idx in todo.values() for i in idx}
    written = set(p.kept)  # plan() left no record of a batch to sample in the file

    def append(qs):  # fsync'd appends: a crash loses at most the batch being written
        jsonl.append(p.path, [_record(q, s if q.key in sampled else None) for q in qs if q.key not in written])
        written.update(q.key for q in qs)

    kw = dict(n=s["n"], temperature=s["temperature"], top_p=s["top_p"], max_new_tokens=s["max_new_tokens"])
    total = sum(len(idx) for idx in todo.values())
    with progress(total) if progress else contextlib.nullcontext() as bar:
        for idx in todo.values():
            prompts = [out[i].prompt_ids for i in idx]
            seeds = [question_seed(s["seed"], out[i].key) for i in idx]
            # A runner that streams progress moves the bar at every decoding step (a batch of
            # long greedy answers takes minutes on a CPU); the others, once per batch.
            streamed = bar is not None and getattr(runner, "streams_progress", False)
            step = {"progress": bar.update} if streamed else {}
            if count is None:
                gen = runner.generate(prompts, seed=seeds, **kw, **step)
            else:
                langs = [out[i].lang for i in idx]
                languages = list(dict.fromkeys(langs))
                gen, *counted = runner.generate_counting(prompts, langs, languages, seed=seeds,
                                                         sums=getattr(count, "sums", False), **kw, **step)
            for i, resp in zip(idx, gen):
                out[i].response_ids = [list(r) for r in resp]
                out[i].responses = [p.tokenizer.decode(r, skip_special_tokens=True) for r in resp]
            with shielded():
                append([out[i] for i in idx])
                if count is not None:
                    count([out[i] for i in idx], languages, *counted)
            if bar and not streamed:
                bar.update(len(idx))
    append(out)
    return out


def tokenized(questions: list[Question], tokenizer, template) -> list[Question]:
    """Questions with token ids, in memory only (no file, no sampling): data with responses."""
    if not all(q.responses for q in questions):
        raise LnaError(NO_RESPONSES)
    tid = tokenizer_id(tokenizer)
    return [replace(_tokenize(q, tokenizer, q.render(template), tid), template=template_of(q, template))
            for q in questions]


def _tokenize(q: Question, tokenizer, prompt: str, tid: str) -> Question:
    """`q` with the prompt's and given responses' token ids for this tokenizer (those lna
    recorded for it are kept); a question without responses gets its prompt's only."""
    if not q.responses:
        return _with_ids(q, prompt, encode(tokenizer, prompt), None, tid)
    if q.tokenizer == tid and q.prompt_ids is not None and q.response_ids is not None:
        check_ids(tokenizer, replace(q, prompt=prompt))
        return q
    ids = encode(tokenizer, prompt)
    return _with_ids(q, prompt, ids, [encode_response(tokenizer, prompt, ids, r) for r in q.responses], tid)


def _with_ids(q: Question, prompt: str, prompt_ids, response_ids, tid) -> Question:
    return replace(q, prompt=prompt, prompt_ids=list(prompt_ids),
                   response_ids=None if response_ids is None else [list(r) for r in response_ids], tokenizer=tid)


def _question(rec: dict, path, tokenizer) -> Question:
    """A kept record as a Question, its token ids checked against the tokenizer."""
    q = Question(rec["key"], rec["lang"], rec.get("query") or "", str(rec.get("answer") or ""), rec["prompt"],
                 rec["responses"], rec["prompt_ids"], rec["response_ids"], rec["tokenizer"], rec.get("template"),
                 where=f"{path}:{rec[LINE]}")
    check_ids(tokenizer, q)
    return q


def check_ids(tokenizer, q: Question) -> None:
    """Token ids given with `q` (trusted over its text, being exactly what lna counts) are in
    the tokenizer's range and are its text: they decode to it (special tokens kept or
    skipped), or they are its encoding (a prompt's; a response's after its prompt), which is
    how lna wrote them. One line naming the file, line and field otherwise."""
    where, size = q.where or q.key, len(tokenizer)
    fix = "fix or delete that record (without ids, lna tokenizes the text)"
    for field, lists in (("prompt_ids", [q.prompt_ids]), ("response_ids", q.response_ids or [])):
        for j, ids in enumerate(lists):
            over = next((t for t in ids if t >= size), None)
            if over is not None:
                name = field if field == "prompt_ids" else f"{field}[{j}]"
                raise LnaError(f"{where}: '{name}' holds token id {over}, outside the tokenizer's {size} ids; {fix}")
    if not (_decodes_to(tokenizer, q.prompt_ids, q.prompt) or list(q.prompt_ids) == encode(tokenizer, q.prompt)):
        raise LnaError(f"{where}: 'prompt_ids' are not the tokens of its prompt; {fix}")
    for j, (text, ids) in enumerate(zip(q.responses, q.response_ids or [])):
        if not (_decodes_to(tokenizer, ids, text)
                or encode_response(tokenizer, q.prompt, q.prompt_ids, text) == list(ids)):
            raise LnaError(f"{where}: 'response_ids[{j}]' ({len(ids)} tokens) are not the tokens of its response "
                           f"{_short(text)}; {fix}")


def _decodes_to(tokenizer, ids, text: str) -> bool:
    return (tokenizer.decode(ids, skip_special_tokens=True) == text
            or tokenizer.decode(ids, skip_special_tokens=False) == text)


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _read(path: Path, note=None) -> tuple[dict, int]:
    """(records by key, how many repeat an earlier record exactly: left by lna before 0.3);
    a torn last line is cut off with a note (lna.core.jsonl); a record that breaks the
    schema, or repeats a key with other content, is one line naming it."""
    recs, repeated = {}, 0
    for line, rec in jsonl.read(path, "responses", "delete the file to sample again", note, numbered=True):
        if not isinstance(rec.get("key"), str):
            raise LnaError(f"{path}:{line}: record has no key: not an lna responses file; "
                           "give it as --dataset, or delete it to sample again")
        schema.check_responses_record(rec, path, line)
        if rec["key"] in recs:
            if {k: v for k, v in recs[rec["key"]].items() if k != LINE} != rec:
                raise LnaError(f"{path}:{line}: repeats key {rec['key']!r} with other content; "
                               "delete the file to sample again")
            repeated += 1
            continue
        recs[rec["key"]] = {**rec, LINE: line}
    return recs, repeated


LINE = "__line__"  # where a kept record is in the responses file (messages; never written)


def _record(q: Question, sampling: dict | None) -> dict:
    rec = {"key": q.key, "lang": q.lang, "query": q.query, "answer": q.answer, "prompt": q.prompt,
           "responses": q.responses, "prompt_ids": q.prompt_ids, "response_ids": q.response_ids,
           "tokenizer": q.tokenizer, "template": q.template}
    if sampling is not None:
        rec["sampling"] = sampling
    return rec


def samples(questions: list[Question]) -> list[Sample]:
    """One Sample a (question, response); empty responses have nothing to count."""
    out = []
    for q in questions:
        prompt = np.asarray(q.prompt_ids, np.int32)  # shared by the question's samples
        for j, resp in enumerate(q.response_ids or []):
            if resp:
                out.append(Sample(f"{q.key}/{j}", q.lang, prompt, np.asarray(resp, np.int32), group=q.key))
    return out


def digest(samples_of_lang: list[Sample]) -> str:
    """Identity of a language's sample set: keys and exact tokens (resume/merge bookkeeping)."""
    h = hashlib.sha256()
    for s in samples_of_lang:
        h.update(s.key.encode())
        h.update(np.asarray(s.prompt, np.int64).tobytes())
        h.update(b"|")
        h.update(np.asarray(s.response, np.int64).tobytes())
    return "sha256:" + h.hexdigest()[:32]

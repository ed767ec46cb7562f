"""Stage 2, score: how well a translation model recovers the pivot responses from a response.

For a non-pivot response Y and each reference E (a pivot-language response to the same
question), the released scorer (NJUNLP/MAPO Preprocess/PPL_batched.py) force-decodes E as
the *target* of the NLLB model with Y as the *source* (Y's NLLB code as src_lang, E's as
the target's), and takes 1 / mean token cross-entropy; a response's score is the mean over
its references. lna follows that: same direction, same tokenization (src_lang codes,
truncation at 512 tokens, labels = the target's tokens with its language code and </s>,
decoder input = </s> + labels[:-1]), cross-entropy from fp32 logits.

Where lna differs:
- The released mean divides the summed cross-entropy by the *padded* label length of its
  batch (the script scores a response against at most 20 references at once, padded to the
  longest; padding counts as zero loss). That is an artefact of batching: the score then
  depends on which references share a batch. lna keeps, per reference, the summed
  cross-entropy, its token count and the padded length the released batching gives, and
  writes both scores: `clean` (the per-reference mean over its own tokens, the default for
  pairs) and `released` (the script's value, for reproducing the study: --score released).
- Japanese is `jpn_Jpan` (lna's language registry, the FLORES-200 code NLLB has); the
  script's `jpn_Hani` is not in NLLB's vocabulary and becomes <unk>.
- Each response is encoded once and decoded against all its references in length-sorted
  batches (the script re-encodes it per reference); padding cannot change a score.
- Questions without a pivot question or references get no scores (the script divides by
  zero) and so give no pairs.
"""
import contextlib
from pathlib import Path

import numpy as np

from lna.core import jsonl
from lna.align import texts
from lna.align import STAGE_FIX
from lna.core.errors import LnaError, first_line
from lna.core.languages import get as language

SCORER = "facebook/nllb-200-distilled-600M"
MAX_LENGTH = 512  # PPL_batched.py: truncation=True, max_length=512 for source and labels
RELEASED_BATCH = 20  # PPL_batched.py scores a response against at most 20 references at once
DTYPES = ("float32", "bfloat16", "float16", "float64")
QUESTIONS_PER_APPEND = 16  # questions scored between fsync'd appends (a kill loses at most these)


class Translator:
    """An NLLB-style encoder-decoder (M2M100 architecture) that force-decodes references."""

    def __init__(self, model: str = SCORER, *, device: str | None = None, dtype: str = "float32",
                 token_budget: int | None = None):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if dtype not in DTYPES:
            raise LnaError(f"unknown scorer dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise LnaError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
        path = _resolve(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        except (OSError, ValueError) as err:
            raise LnaError(f"{model}: cannot load the translation model ({first_line(err)})") from None
        if not hasattr(self.tokenizer, "src_lang"):
            raise LnaError(f"{model}: its tokenizer has no src_lang; give an NLLB/M2M100 translation model")
        self.name, self.device, self.dtype = model, torch.device(device), dtype
        self.token_budget = token_budget or (16384 if device.startswith("cuda") else 2048)
        self.start = self.model.config.decoder_start_token_id
        self.pad = self.tokenizer.pad_token_id

    def encode(self, items: list[str], code: str) -> list[list[int]]:
        """Token ids of `items` in the language with NLLB code `code` (code token first, </s> last)."""
        if self.tokenizer.convert_tokens_to_ids(code) in (None, self.tokenizer.unk_token_id):
            raise LnaError(f"translation model {self.name} has no language code {code}; "
                           "register the language with a code it knows (lna.core.languages.register)")
        self.tokenizer.src_lang = code
        return [list(x) for x in self.tokenizer(items, truncation=True, max_length=MAX_LENGTH)["input_ids"]]

    def nll(self, sources: list, targets: list, pairs: list, bar=None) -> tuple[np.ndarray, np.ndarray]:
        """Summed cross-entropy (float64) and token count of each target given its source, for
        `pairs` of (source index, target index)."""
        import torch

        out = np.zeros(len(pairs), np.float64)
        count = np.array([len(targets[t]) for _, t in pairs], np.int64)
        order = sorted(range(len(pairs)), key=lambda i: (len(sources[pairs[i][0]]), pairs[i][0], len(targets[pairs[i][1]])))
        with torch.inference_mode():
            for batch in _batches(order, pairs, sources, targets, self.token_budget):
                out[batch] = self._nll_batch([pairs[i] for i in batch], sources, targets)
                if bar is not None:
                    bar.update(len(batch))
        return out, count

    def _nll_batch(self, pairs, sources, targets) -> np.ndarray:
        import torch

        dev = self.device
        uniq = list(dict.fromkeys(s for s, _ in pairs))
        src, src_mask = _pad([sources[s] for s in uniq], self.pad, dev)
        enc = self.model.get_encoder()(input_ids=src, attention_mask=src_mask).last_hidden_state
        row = torch.tensor([uniq.index(s) for s, _ in pairs], device=dev)
        labels = [targets[t] for _, t in pairs]
        dec_in, _ = _pad([[self.start] + t[:-1] for t in labels], self.pad, dev)
        lab, lab_mask = _pad(labels, self.pad, dev)
        # No decoder attention mask, as in the released call: padding sits after every real
        # position, which causal attention never lets a real position see.
        hidden = self.model.model(encoder_outputs=(enc.index_select(0, row),), attention_mask=src_mask.index_select(0, row),
                                  decoder_input_ids=dec_in).last_hidden_state
        real = lab_mask.bool()
        h, y = hidden[real], lab[real]
        which = torch.arange(len(pairs), device=dev).unsqueeze(1).expand_as(lab)[real]
        total = torch.zeros(len(pairs), dtype=torch.float64, device=dev)
        head = self.model.get_output_embeddings()
        for i in range(0, len(y), 1024):  # bound the [positions, vocab] logits (NLLB: 256k vocab)
            logits = head(h[i:i + 1024])
            logits = logits if logits.dtype == torch.float64 else logits.float()
            ce = torch.nn.functional.cross_entropy(logits, y[i:i + 1024], reduction="none")
            total.index_add_(0, which[i:i + 1024], ce.double())
        return total.cpu().numpy()


def _pad(rows: list, pad: int, dev):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids.to(dev), mask.to(dev)


def _batches(order, pairs, sources, targets, budget):
    """Consecutive runs of `order` of at most `budget` padded positions (pairs x the longer
    of source and target: the encoder states are expanded per pair)."""
    batch, width = [], 0
    for i in order:
        s, t = pairs[i]
        w = max(width, len(sources[s]), len(targets[t]))
        if batch and (len(batch) + 1) * w > budget:
            yield batch
            batch, w = [], max(len(sources[s]), len(targets[t]))
        batch.append(i)
        width = w
    if batch:
        yield batch


def released_padding(tokens: list[int]) -> list[int]:
    """Per reference, the label length PPL_batched.py divides by: the longest reference in its
    batch of at most RELEASED_BATCH consecutive references."""
    out = []
    for i in range(0, len(tokens), RELEASED_BATCH):
        chunk = tokens[i:i + RELEASED_BATCH]
        out += [max(chunk)] * len(chunk)
    return out


def response_scores(nll: list, tokens: list) -> dict:
    """Every per-reference value of one response, and its two scores (means over references)."""
    padded = released_padding(tokens)
    clean = [t / x for t, x in zip(tokens, nll)]
    released = [p / x for p, x in zip(padded, nll)]
    return {"score_clean": float(np.mean(clean)) if clean else None,
            "score_released": float(np.mean(released)) if released else None,
            "nll": nll, "tokens": tokens, "padded": padded, "clean": clean, "released": released}


def _resolve(model: str) -> str:
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    from lna.models.loading import _from_hub_cache  # one way to find a model in the local cache (never downloads)

    return str(_from_hub_cache(model)[0])


def score(questions: list, pivot: str, path, *, translator=None, settings: dict, progress=None) -> list[dict]:
    """Score every non-pivot response of `questions` (prompt, responses and answer filled in)
    against the pivot responses of the same question id; append one record a question to
    `path` (resumed: questions it holds are kept). `translator()` builds the Translator when
    there is work; `progress(total)` gives a bar."""
    by_id = texts.pivot_index(questions, pivot)
    targets = [q for q in questions if q.lang != pivot]
    if not targets:
        raise LnaError(f"nothing to score: the data has only the pivot language {pivot}")
    if not any(texts.question_id(q.key) in by_id for q in targets):
        raise LnaError(f"no question shares an id with a {pivot} question; questions pair across languages by "
                       "id (MGSM/MSVAMP row, or the JSONL 'id' field)")
    kept = {r["key"]: r for r in jsonl.read(path, "scores", STAGE_FIX)}
    todo = []
    for q in targets:
        piv = by_id.get(texts.question_id(q.key))
        refs = texts.references(piv.responses) if piv else []
        rec = kept.get(q.key)
        if rec is not None:
            if rec.get("scorer") != settings or [r["text"] for r in rec["responses"]] != list(q.responses) \
                    or rec.get("references") != refs:
                raise LnaError(f"{path}: holds scores of {q.key} from other responses or scorer settings; "
                               "use another -o or delete that file")
            continue
        todo.append((q, piv, refs))
    if todo:
        model = translator()
        total = sum(len(q.responses) * len(refs) for q, _, refs in todo)
        with progress(total) if progress else contextlib.nullcontext() as bar:
            for i in range(0, len(todo), QUESTIONS_PER_APPEND):
                jsonl.append(path, _score_chunk(model, todo[i:i + QUESTIONS_PER_APPEND], pivot, settings, bar))
    done = {r["key"]: r for r in jsonl.read(path, "scores", STAGE_FIX)}
    return [done[q.key] for q in targets]


def _score_chunk(model, chunk, pivot, settings, bar) -> list[dict]:
    sources, targets, pairs, spans = [], [], [], []
    for q, piv, refs in chunk:
        src0, tgt0 = len(sources), len(targets)
        sources += model.encode([texts.source_text(r) for r in q.responses], language(q.lang).nllb)
        targets += model.encode(refs, language(pivot).nllb) if refs else []
        pairs += [(src0 + j, tgt0 + k) for j in range(len(q.responses)) for k in range(len(refs))]
        spans.append(len(pairs))
    nll, count = model.nll(sources, targets, pairs, bar)
    out, start = [], 0
    for (q, piv, refs), end in zip(chunk, spans):
        m = len(refs)
        rows = []
        for j, text in enumerate(q.responses):
            sl = slice(start + j * m, start + (j + 1) * m)
            rows.append({"text": text, **response_scores(nll[sl].tolist(), count[sl].tolist())})
        out.append({"key": q.key, "lang": q.lang, "qid": texts.question_id(q.key), "prompt": q.prompt,
                    "answer": q.answer, "pivot_key": piv.key if piv else None, "scorer": settings,
                    "references": refs, "responses": rows})
        start = end
    return out

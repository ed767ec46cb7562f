"""lna-steer's measurement: what every setting (row) shares, and the resumable work on it.

Session generates each (row, prompt) output a fixed batch at a time, appending to
outputs.jsonl (a rerun reads them back), scores perplexities with the masked-NLL engine
(lna.interventions.masked_nll; per-sample NLLs checkpointed in nll.npz) and judges every
output (lna.interventions.steer.judge). Used by the dense run (lna.interventions.steer.run)
and the mixture-of-experts one (lna.interventions.steer.experts) alike.
"""
import hashlib
import json
from pathlib import Path

import numpy as np

from lna.core import jsonl
from lna.core.atomic import atomic_file
from lna.core.checkpoint import Checkpointer
from lna.core.errors import LnaError
from lna.core.interrupts import shielded
from lna.core.progress import Bar
from lna.inputs.samples import Sample
from lna.interventions import expert_steer
from lna.interventions.steer import judge

BATCH = 16  # generations per runner call (fixed: a resumed run regenerates the same batches)
OUTPUTS, STATE = "outputs.jsonl", "nll.npz"


def ppl_threshold(grid: dict, refs, tgt: str, opts) -> tuple:
    """(max_ppl, what it is): --max-ppl, else ppl_factor x the unsteered model's perplexity of
    the target references, else of its own (baseline) outputs."""
    if opts.max_ppl is not None:
        return float(opts.max_ppl), "--max-ppl"
    factor = judge.Thresholds().ppl_factor
    tokens = np.array([len(s.response) for s in refs], np.float64)
    pick = np.array([s.lang == tgt for s in refs], bool)
    if pick.any() and tokens[pick].sum():
        ppl = float(np.exp(grid["nll"]["refs"][0][pick].sum() / tokens[pick].sum()))
        return factor * ppl, f"{factor:g} x the unsteered model's perplexity of the {tgt} reference responses"
    sums, lengths = grid["nll"]["outputs"][0], np.array([len(t) for t in grid["tokens"][0]], np.float64)
    ppl = float(np.exp(np.nansum(sums) / lengths.sum())) if lengths.sum() else float("inf")
    return factor * ppl, f"{factor:g} x the unsteered model's perplexity of its own (baseline) outputs"


class Session:
    """What every measured row shares: the runner, prompts, references and output folder;
    collects each output's tokens, text and judgements for outputs.jsonl."""

    def __init__(self, runner, prompts, keys, refs, out: Path, opts):
        self.runner, self.prompts, self.keys, self.refs, self.out, self.opts = runner, prompts, keys, refs, out, opts
        self.tokens, self.texts, self.judged = {}, {}, {}

    def measure(self, rows: list, state: Path) -> dict:
        """{"tokens": [row][prompt] output ids, "nll": {"refs": [row, ref], "outputs": [row, prompt]}}."""
        live = [r for r in rows if r.intervention is not None]
        if live and isinstance(live[0].intervention, expert_steer.ExpertIntervention):
            masks, values = expert_steer.stack([r.intervention for r in live])  # ExpertMasks tables
        else:
            masks = np.stack([r.intervention.mask for r in live]) if live else np.zeros((0, 1, 1), bool)
            values = np.stack([r.intervention.values for r in live]) if live else np.zeros((0, 1, 1), np.float32)
        ids, m = [], 0
        for r in rows:
            ids.append(-1 if r.intervention is None or r.intervention.empty else m)
            m += r.intervention is not None
        if not live:
            masks = np.zeros((0, self.runner.layers, self.runner.neurons), bool)
            values = np.zeros(masks.shape, np.float32)
        offsets = row_offsets(live)
        outputs = _generate(self.runner, self.prompts, self.keys, rows, ids, masks, values, self.out, self.opts,
                            offsets)
        for key, tokens in outputs.items():
            self.tokens[key] = tokens
            self.texts[key] = self.runner.tokenizer.decode(tokens, skip_special_tokens=True)
        runner = self.runner if offsets is None else _Adding(self.runner, offsets)
        nll = _perplexities(runner, rows, ids, masks, values, self.prompts, self.keys, outputs, self.refs,
                            self.out, self.opts, state)
        return {"tokens": [[outputs[_key(rows, self.keys, r, q)] for q in range(len(self.keys))]
                           for r in range(len(rows))], "nll": nll}

    def judge(self, rows, measured: dict, max_ppl: float) -> None:
        for r, row in enumerate(rows):
            for q, key in enumerate(self.keys):
                k = f"{row.name}|{key}"
                n = len(measured["tokens"][r][q])
                ppl = float(np.exp(measured["nll"]["outputs"][r][q] / n)) if n else None
                self.judged[k] = judge.judge(self.texts[k], ppl, self.opts.target, max_ppl)

    def write_outputs(self) -> None:
        """outputs.jsonl again, whole: each output's ids, text and judgements (reruns read the ids)."""
        path = self.out / OUTPUTS
        with shielded(), atomic_file(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                for key, tokens in self.tokens.items():
                    row, _, question = key.partition("|")
                    rec = {"key": key, "row": row, "question": question, "tokens": tokens, "text": self.texts[key],
                           **self.judged.get(key, {})}
                    fh.write(_one_line(json.dumps(rec, ensure_ascii=False)) + "\n")


# -- generation --------------------------------------------------------------------------------------
def row_offsets(rows):
    """float32 [rows, layer, neuron] of the rows' offsets (zeros where a row has none), or None."""
    if not any(r.intervention.offsets is not None for r in rows):
        return None
    return np.stack([np.zeros(r.intervention.mask.shape, np.float32) if r.intervention.offsets is None
                     else r.intervention.offsets for r in rows])


class _Adding:
    """The runner, its nll adding `offsets` (per mask) to the activations: lets the masked-NLL
    engine score the difference-of-means rows unchanged."""

    def __init__(self, runner, offsets):
        self._runner, self._offsets = runner, offsets

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def nll(self, samples, masks, mask_ids, values=None):
        offsets = None if masks is None or not len(masks) else self._offsets
        return self._runner.nll(samples, masks, mask_ids, values, offsets=offsets)


def _generate(runner, prompts, keys, rows, ids, masks, values, out: Path, opts, offsets=None) -> dict:
    """{"row|question key": output tokens}, a fixed batch of (row, prompt) items at a time."""
    path = out / OUTPUTS
    kept = _read_outputs(path)
    items = [(r, q) for r in range(len(rows)) for q in range(len(prompts))]
    batches = [items[i:i + BATCH] for i in range(0, len(items), BATCH)]
    todo = [b for b in batches if not all(_key(rows, keys, r, q) in kept for r, q in b)]
    with Bar(opts.progress, sum(len(b) for b in todo), "steer", "answer") as bar:
        for batch in todo:
            extra = {} if offsets is None else {"offsets": offsets}
            got = runner.generate([prompts[q] for _, q in batch], n=1, temperature=0.0, top_p=1.0,
                                  max_new_tokens=opts.max_new_tokens, seed=0, masks=masks, values=values,
                                  mask_ids=[ids[r] for r, _ in batch], **extra)
            new = {_key(rows, keys, r, q): [int(t) for t in tokens] for (r, q), (tokens,) in zip(batch, got)}
            jsonl.append(path, [{"key": k, "tokens": v} for k, v in new.items()])  # whole lines or none
            kept.update(new)
            bar.update(len(batch))
    return {_key(rows, keys, r, q): kept[_key(rows, keys, r, q)] for r, q in items}


def _key(rows, keys, r, q) -> str:
    return f"{rows[r].name}|{keys[q]}"


def _read_outputs(path: Path) -> dict:
    kept = {}
    for i, rec in enumerate(jsonl.read(path, "lna-steer outputs", f"delete {path} to generate again")):
        if not isinstance(rec.get("key"), str) or not isinstance(rec.get("tokens"), list):
            raise LnaError(f"{path}: record {i + 1} is not an lna-steer output; delete {path} to generate again")
        kept[rec["key"]] = rec["tokens"]
    return kept


# -- perplexities ------------------------------------------------------------------------------------
def _perplexities(runner, rows, ids, masks, values, prompts, keys, outputs, refs, out: Path, opts,
                  state: Path) -> dict:
    """NLL sums: "refs" float64 [rows, references] (each row's intervention on every
    reference), "outputs" float64 [rows, prompts] (no intervention, on each row's outputs;
    NaN where an output is empty)."""
    from lna.interventions.masked_nll import evaluate, mask_rows

    gen = [Sample(f"{r.name}|{k}", opts.source, tuple(prompts[q]), tuple(outputs[f"{r.name}|{k}"]))
           for r in rows for q, k in enumerate(keys)]
    scored = [s for s in gen if s.response]
    # evaluate's rows: 0 without intervention, m + 1 with masks[m]; rows[i] uses ids[i] + 1.
    order = [m + 1 for m in ids]
    n_masks = mask_rows(masks)  # masks may be ExpertMasks (a mixture-of-experts model)
    nll = {"refs": np.full((1 + n_masks, len(refs)), np.nan), "outputs": np.full((1, len(scored)), np.nan)}
    if state.is_file():
        try:
            with np.load(state) as z:
                kept = {k: z[k] for k in nll}
        except Exception:  # noqa: BLE001 - a torn or foreign file
            raise LnaError(f"{state}: not a readable lna-steer state; delete it to start over") from None
        if any(kept[k].shape != nll[k].shape for k in nll):
            raise LnaError(f"{state}: from another run; delete it to start over")
        nll = kept
    unused = sorted(set(range(1 + n_masks)) - set(order))  # not asked for (empty ones use the baseline row)
    nll["refs"][unused] = 0.0

    def write():
        with atomic_file(state) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **nll)

    saver = Checkpointer(write, every=opts.checkpoint_every)

    ref_tokens = np.array([len(s.response) for s in refs], np.int64)
    todo = int((np.isnan(nll["refs"]) * ref_tokens).sum())
    todo += int(sum(len(s.response) for s, v in zip(scored, nll["outputs"][0]) if np.isnan(v)))
    with Bar(opts.progress, todo, "perplexity", "tok") as bar:
        def on_chunk(_, tokens):
            saver.changed()
            bar.update(tokens)
            saver.tick()

        with saver.on_stop():
            if refs:
                nll["refs"] = evaluate(runner, refs, masks, values=values, nll=nll["refs"],
                                       token_budget=opts.token_budget, on_chunk=on_chunk)
            if scored:
                nll["outputs"] = evaluate(runner, scored, np.zeros((0,), bool), nll=nll["outputs"],
                                          token_budget=opts.token_budget, on_chunk=on_chunk)
        saver.save()
    by_key = dict(zip((s.key for s in scored), nll["outputs"][0]))
    return {"refs": nll["refs"][order],
            "outputs": np.array([by_key.get(s.key, np.nan) for s in gen]).reshape(len(rows), len(keys))}


BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # line breaks to str.splitlines (json.dumps keeps them)


def _one_line(line: str) -> str:
    """A JSON record readable as one line by any line splitter: its line-break characters,
    which can only occur inside strings, as \\u escapes."""
    return "".join(f"\\u{ord(c):04x}" if c in BREAKS else c for c in line)


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()[:32]

"""lna-steer: switch a model's output language through its language neurons, and measure it.

Prompts of language X (the dataset's questions, or a file) are answered greedily:
- baseline: no intervention;
- off: X's neurons zeroed (act(gate) := 0), Y's left as they are;
- strength s (for each --strengths): X's neurons zeroed and Y's set to s times their mean
  activation in Y (lna.interventions.intervene: sums / tokens of the store, or --value active-mean),
each within every layer group of --layers (default: all layers). Every output is read by
a language identifier and a script check (lna.interventions.langid): the share of outputs in Y is the
effect. The cost, as perplexities (exp of the token-weighted mean NLL):
- ppl_source / ppl_target: the steered model's perplexity on reference responses in X
  and in Y (each with its own prompt; from --responses, by default the responses file
  beside the store, else the data's own responses): what the intervention does to the
  model as a model of each language. Steering should leave Y modelled (ideally better)
  while X degrades as in lna-ablate.
- ppl_outputs: the unsteered model's perplexity of the steered outputs given their
  prompts: whether what the steered model wrote is text the model itself finds likely
  (low for repetitive text too, so it is read beside the shares, not alone).
All interventions share batches (per-prompt ids in the runners' generate and nll).

Resume: outputs go to DIR/outputs.jsonl a fixed batch at a time, and per-sample NLLs to
DIR/nll.npz (NaN: not yet); a rerun of the same command computes only what is missing;
DIR/run.json records the run's settings and a rerun with others is refused. The table
(steer.json, steer.csv, steer.md) and figure (steer.png) are written all or nothing.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lna.core import jsonl, languages, runs

from lna.inputs import data, responses

from lna.interventions import intervene, langid

from lna.identification import neurons
from lna.core.atomic import atomic_file, writing
from lna.core.errors import LnaError, note
from lna.models.fingerprint import check_runner
from lna.core.checkpoint import Checkpointer
from lna.core.progress import Bar, sayer
from lna.runners.options import RunnerOptions, open_runner, resolve
from lna.inputs.samples import Sample

BATCH = 16  # generations per runner call (fixed: a resumed run regenerates the same batches)
OUTPUTS, STATE = "outputs.jsonl", "nll.npz"


@dataclass(kw_only=True)
class Options(RunnerOptions):
    neurons: str
    store: str
    source: str  # --from
    target: str  # --to
    out: str
    strengths: tuple = (1.0, 2.0, 4.0)
    layers: str = "all"
    setting: str = "specific+related"
    value: str = "mean"
    dataset: str = "mgsm"
    prompts: str | None = None  # a text file, one question a line (instead of the dataset's)
    responses: str | None = None  # references for ppl_source / ppl_target
    limit: int | None = None
    max_new_tokens: int = 64
    checkpoint_every: float = 60.0
    allow_other_model: bool = False
    progress: bool = True


@dataclass
class Row:
    name: str  # "baseline", "<layers>/off", "<layers>/x<strength>"
    layers: str
    strength: float | None  # None: off (Y untouched); NaN for the baseline
    intervention: intervene.Intervention | None


def plan(ns, store, opts: Options) -> list:
    """The rows: baseline, then per layer group "off" and each strength."""
    rows = [Row("baseline", "-", float("nan"), None)]
    for name, layers in intervene.parse_layers(opts.layers, ns.layers):
        for strength in (None, *opts.strengths):
            iv = intervene.steering(ns, store, opts.source, opts.target, strength, layers, setting=opts.setting,
                                    value=opts.value)
            label = "off" if strength is None else f"x{strength:g}"
            rows.append(Row(f"{name}/{label}", name, strength, iv))
    return rows


def run(opts: Options) -> dict:
    say = sayer(opts.progress)
    out = runs.out_folder(opts.out)
    langid.check()
    src, tgt = languages.code_of(opts.source), languages.code_of(opts.target)
    if src == tgt:
        raise LnaError(f"--from and --to are both {src}: steer from one language to another")
    opts.source, opts.target = src, tgt
    if not opts.strengths or any(s < 0 for s in opts.strengths):
        raise LnaError(f"--strengths must be non-negative multiples of the mean activation, got {opts.strengths}")
    ns = neurons.load(opts.neurons)
    from lna.storage.store import open_store

    store = open_store(opts.store)
    for lang in (src, tgt):
        store.index(lang)  # one line if the store lacks it
        intervene.neuron_mask(ns, lang, opts.setting)
    store.mean_activation(tgt, opts.value)  # one line if the sums are missing
    info = resolve(opts)
    if (info.layers, info.neurons) != (ns.layers, ns.neurons):
        raise LnaError(f"{opts.neurons}: neuron sets of {ns.layers} x {ns.neurons} neurons, but {info.name} has "
                       f"{info.layers} x {info.neurons}; steer the model they came from")
    rows = plan(ns, store, opts)
    questions = _questions(opts)
    references = _references(opts, say)

    model = open_runner(opts, info)
    runner, backend, dtype, template = model.runner, model.backend, model.dtype, model.template
    if not opts.allow_other_model:
        for what, source in ((opts.neurons, ns.source), (opts.store, store.meta)):
            try:
                check_runner(source, runner, f"{what} and --model {opts.model}")
            except LnaError as err:
                raise LnaError(f"{err}; pass --allow-other-model to steer anyway") from None
    prompts = [responses.encode(runner.tokenizer, q.render(template)) for q in questions]
    refs = responses.samples(responses.tokenized(references, runner.tokenizer, template)) if references else []
    masks = np.stack([r.intervention.mask for r in rows[1:]])
    values = np.stack([r.intervention.values for r in rows[1:]])
    ids = [-1] + [-1 if r.intervention.empty else i for i, r in enumerate(rows[1:])]
    identity = {"model": opts.model, **model.identity, "template": template.applied, "rows": [r.name for r in rows], "interventions": _digest(masks, values),
                "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:32],
                "references": [s.key for s in refs], "max_new_tokens": opts.max_new_tokens}
    runs.claim(out, identity, "lna-steer outputs", [OUTPUTS, STATE])
    say(f"steering {src} -> {tgt}: {len(rows)} settings x {len(prompts)} prompts, {len(refs)} reference responses, "
        f"with {backend} on {runner.device} -> {out}")
    keys = [q.key for q in questions]
    with writing(out):
        outputs = _generate(runner, prompts, keys, rows, ids, masks, values, out, opts)
        texts = {key: runner.tokenizer.decode(tokens, skip_special_tokens=True) for key, tokens in outputs.items()}
        nll = _perplexities(runner, rows, ids, masks, values, prompts, keys, outputs, refs, out, opts)
    result = table(rows, questions, texts, outputs, nll, refs, src, tgt)
    result.update({"model": opts.model, "neurons": str(opts.neurons), "store": str(opts.store), "from": src, "to": tgt,
                   "setting": opts.setting, "value": opts.value, "backend": backend, "dtype": dtype,
                   "max_new_tokens": opts.max_new_tokens, "prompts": len(prompts), "references": len(refs),
                   "examples": {r.name: texts[f"{r.name}|{questions[0].key}"] for r in rows}})
    from lna.interventions import steer_report

    files = steer_report.write(result, out, title=f"{info.display}: {src} -> {tgt}")
    say(f"wrote {', '.join(files)} to {out}")
    return result


# -- inputs ----------------------------------------------------------------------------------------
def _questions(opts: Options) -> list:
    if opts.prompts:
        path = Path(opts.prompts)
        if not path.is_file():
            raise LnaError(f"--prompts {path}: no such file (one question a line)")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise LnaError(f"--prompts {path}: no questions in it (one a line)")
        return [data.Question(f"prompts/{i}", opts.source, line) for i, line in enumerate(lines[:opts.limit])]
    return data.load(opts.dataset, opts.source, limit=opts.limit)[1]


def _references(opts: Options, say) -> list:
    """Questions with reference responses in X and Y (for the perplexities), or []."""
    spec = opts.responses or str(responses.path_beside(opts.store))
    if opts.responses is None and not Path(spec).is_file():
        spec = opts.dataset if not opts.prompts else None
    if spec is None:
        return []
    try:
        _, qs = data.load(spec, f"{opts.source},{opts.target}", limit=opts.limit)
    except LnaError as err:
        if opts.responses:
            raise
        note(f"no reference responses in {opts.source} and {opts.target} ({err}): ppl_source and ppl_target "
             "are left out; give --responses")
        return []
    qs = [q for q in qs if q.responses]
    if {q.lang for q in qs} != {opts.source, opts.target}:
        if opts.responses:
            raise LnaError(f"{spec}: no responses in {opts.source} or {opts.target}; ppl_source and ppl_target "
                           "need both")
        note(f"{spec} has no responses in both {opts.source} and {opts.target}: ppl_source and ppl_target are left out")
        return []
    say(f"reference responses: {spec}")
    return qs


# -- generation --------------------------------------------------------------------------------------
def _generate(runner, prompts, keys, rows, ids, masks, values, out: Path, opts: Options) -> dict:
    """{"row|question key": output tokens}, a fixed batch of (row, prompt) items at a time."""
    path = out / OUTPUTS
    kept = _read_outputs(path)
    items = [(r, q) for r in range(len(rows)) for q in range(len(prompts))]
    batches = [items[i:i + BATCH] for i in range(0, len(items), BATCH)]
    todo = [b for b in batches if not all(_key(rows, keys, r, q) in kept for r, q in b)]
    with Bar(opts.progress, sum(len(b) for b in todo), "steer", "answer") as bar:
        for batch in todo:
            got = runner.generate([prompts[q] for _, q in batch], n=1, temperature=0.0, top_p=1.0,
                                  max_new_tokens=opts.max_new_tokens, seed=0, masks=masks, values=values,
                                  mask_ids=[ids[r] for r, _ in batch])
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
def _perplexities(runner, rows, ids, masks, values, prompts, keys, outputs, refs, out: Path, opts: Options) -> dict:
    """NLL sums: "refs" float64 [rows, references] (each row's intervention on every
    reference), "outputs" float64 [rows, prompts] (no intervention, on each row's outputs;
    NaN where an output is empty)."""
    from lna.interventions.masked_nll import evaluate

    gen = [Sample(f"{r.name}|{k}", opts.source, tuple(prompts[q]), tuple(outputs[f"{r.name}|{k}"]))
           for r in rows for q, k in enumerate(keys)]
    scored = [s for s in gen if s.response]
    # evaluate's rows: 0 without intervention, m + 1 with masks[m]; rows[i] uses ids[i] + 1.
    order = [m + 1 for m in ids]
    state = out / STATE
    nll = {"refs": np.full((1 + len(masks), len(refs)), np.nan), "outputs": np.full((1, len(scored)), np.nan)}
    if state.is_file():
        try:
            with np.load(state) as z:
                kept = {k: z[k] for k in nll}
        except Exception:  # noqa: BLE001 - a torn or foreign file
            raise LnaError(f"{state}: not a readable lna-steer state; delete it to start over") from None
        if any(kept[k].shape != nll[k].shape for k in nll):
            raise LnaError(f"{state}: from another run; delete it to start over")
        nll = kept
    unused = sorted(set(range(1, 1 + len(masks))) - set(order))  # empty interventions: the baseline's row
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
                nll["outputs"] = evaluate(runner, scored, masks[:0], nll=nll["outputs"],
                                          token_budget=opts.token_budget, on_chunk=on_chunk)
        saver.save()
    by_key = dict(zip((s.key for s in scored), nll["outputs"][0]))
    return {"refs": nll["refs"][order],
            "outputs": np.array([by_key.get(s.key, np.nan) for s in gen]).reshape(len(rows), len(keys))}


# -- the table -----------------------------------------------------------------------------------------
def table(rows, questions, texts, outputs, nll, refs, src, tgt) -> dict:
    """Per row: shares of outputs in Y (language identifier, script) and X, perplexities."""
    ref_lang = np.array([s.lang for s in refs])
    ref_tokens = np.array([len(s.response) for s in refs], np.float64)

    def ppl(values, tokens):
        return float(np.exp(values.sum() / tokens.sum())) if tokens.sum() else None

    out = []
    for r, row in enumerate(rows):
        keys = [f"{row.name}|{q.key}" for q in questions]
        found = [langid.identify(texts[k])[0] for k in keys]
        script = [langid.script_share(texts[k], tgt)[0] for k in keys]
        lengths = np.array([len(outputs[k]) for k in keys], np.float64)  # each output token is scored
        iv = row.intervention
        out.append({
            "row": row.name, "layers": row.layers,
            "strength": None if row.strength is None or np.isnan(row.strength) else row.strength,
            "outputs": len(keys), "share_target": float(np.mean([f == tgt for f in found])),
            "share_target_script": float(np.mean([s > 0.5 for s in script])),
            "share_source": float(np.mean([f == src for f in found])),
            "share_none": float(np.mean([f == langid.NONE for f in found])),
            "ppl_source": ppl(nll["refs"][r][ref_lang == src], ref_tokens[ref_lang == src]) if refs else None,
            "ppl_target": ppl(nll["refs"][r][ref_lang == tgt], ref_tokens[ref_lang == tgt]) if refs else None,
            "ppl_outputs": ppl(np.nan_to_num(nll["outputs"][r]), lengths),
            "neurons_set": 0 if iv is None else int((iv.mask & (iv.values != 0)).sum()),
            "neurons_zeroed": 0 if iv is None else int((iv.mask & (iv.values == 0)).sum()),
            "languages_found": {lang: found.count(lang) for lang in sorted(set(found))},
        })
    return {"rows": out}


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()[:32]

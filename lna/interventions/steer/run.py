"""lna-steer: switch a model's output language through its language neurons, and measure it.

Prompts of language X (the dataset's questions, or a file) are answered greedily:
- baseline: no intervention;
- off: X's neurons zeroed (act(gate) := 0), Y's left as they are;
- strength s (for each --strengths) and method (--methods, lna.interventions.steer.methods):
  X's neurons zeroed and Y's set to s times a per-neuron level (mean: their mean activation
  in Y from the store; quantile: a high quantile of their activation in Y),
each within every layer group of --layers (default: all layers; "dense": where the sets
concentrate). Every output is judged three ways (lna.interventions.steer.judge): its
language (identifier label and probability), its degeneracy (repeated 4-grams, distinct
words) and its perplexity under the unsteered model; the headline is the share of outputs
fluent in Y (all three pass). The cost, as perplexities (exp of the token-weighted mean NLL):
- ppl_source / ppl_target: the steered model's perplexity on reference responses in X
  and in Y (each with its own prompt; from --responses, by default the responses file
  beside the store, else the data's own responses): what the intervention does to the
  model as a model of each language.
- ppl_outputs: the unsteered model's perplexity of the steered outputs given their prompts.
All interventions share batches (per-prompt ids in the runners' generate and nll).
--search adds, per method and layer group, the smallest strength reaching a share of
fluent-target outputs (lna.interventions.steer.search).

Resume: outputs go to DIR/outputs.jsonl a fixed batch at a time, and per-sample NLLs to
DIR/nll.npz (NaN: not yet; the search's to DIR/search/); a rerun of the same command
computes only what is missing; DIR/run.json records the run's settings and a rerun with
others is refused. At the end outputs.jsonl is rewritten whole with each output's text and
judgements; the table (steer.json, steer.csv, steer.md) and figure (steer.png) are written
all or nothing.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lna.core import jsonl, languages, runs

from lna.inputs import responses

from lna.interventions import expert_ablate, expert_steer, intervene, langid
from lna.interventions.steer import judge, methods
from lna.interventions.steer.inputs import check_templates, questions_of, references_of
from lna.interventions.steer.methods import Planner

from lna.identification import neurons
from lna.core.atomic import atomic_file, writing
from lna.core.errors import LnaError, note
from lna.models.fingerprint import check_runner
from lna.core.checkpoint import Checkpointer
from lna.core.interrupts import shielded
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
    methods: str = "mean"  # comma-separated lna.interventions.steer.methods.METHODS
    quantile: float = 0.9  # the quantile method's q
    search: float | None = None  # target share of fluent-target outputs for the strength search
    max_ppl: float | None = None  # the perplexity judgement's threshold (default: from the references)
    allow_template_mismatch: bool = False
    dataset: str = "mgsm"
    prompts: str | None = None  # a text file, one question a line (instead of the dataset's)
    responses: str | None = None  # references for ppl_source / ppl_target
    limit: int | None = None
    max_new_tokens: int = 64
    checkpoint_every: float = 60.0
    allow_other_model: bool = False
    progress: bool = True


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
    chosen = methods.parse(opts.methods)
    if not 0 < opts.quantile < 1:
        raise LnaError(f"--quantile {opts.quantile}: give a quantile between 0 and 1, such as 0.9")
    if opts.search is not None and not 0 < opts.search <= 1:
        raise LnaError(f"--search {opts.search}: give the share of fluent-target outputs to reach, in (0, 1]")
    if expert_ablate.is_expert_sets(opts.neurons):
        raise LnaError(f"{opts.neurons}: the sets of `lna experts`; lna-steer runs them with "
                       "lna.interventions.steer.experts.run")
    if opts.value == expert_steer.VALUE:
        raise LnaError(f"--value {opts.value} is for mixture-of-experts models (their stores keep no activation "
                       "sums); a dense model is steered to mean activations: --value mean or active-mean")
    ns = neurons.load(opts.neurons)
    from lna.storage.store import open_store

    store = open_store(opts.store)
    if store.has_experts:
        _refuse_moe(f"{opts.store}: a mixture-of-experts count store")
    empty = []
    for lang in (src, tgt):
        store.index(lang)  # one line if the store lacks it
        if not intervene.neuron_mask(ns, lang, opts.setting).any():
            empty.append(lang)
    store.mean_activation(tgt, opts.value)  # one line if the sums are missing
    if "diffmean" in chosen:
        store.mean_activation(src, opts.value)
    info = resolve(opts)
    if expert_ablate.is_moe(info):
        _refuse_moe(f"{info.name}: a mixture-of-experts model")
    if (info.layers, info.neurons) != (ns.layers, ns.neurons):
        raise LnaError(f"{opts.neurons}: neuron sets of {ns.layers} x {ns.neurons} neurons, but {info.name} has "
                       f"{info.layers} x {info.neurons}; steer the model they came from")
    Planner(ns, store, opts)  # --layers checked before the model loads
    questions = questions_of(opts)
    references = references_of(opts, say)

    model = open_runner(opts, info)
    runner, backend, dtype, template = model.runner, model.backend, model.dtype, model.template
    if not opts.allow_other_model:
        for what, source in ((opts.neurons, ns.source), (opts.store, store.meta)):
            try:
                check_runner(source, runner, f"{what} and --model {opts.model}")
            except LnaError as err:
                raise LnaError(f"{err}; pass --allow-other-model to steer anyway") from None
    if "diffmean" in chosen and backend != "hf":
        raise LnaError(f"--methods diffmean adds to activations, which only the transformers backend does; "
                       f"pass --backend hf, or leave diffmean out (this run would use {backend})")
    templates = check_templates(questions, references, template, opts)
    prompts = [responses.encode(runner.tokenizer, q.render(template)) for q in questions]
    refs = responses.samples(responses.tokenized(references, runner.tokenizer, template)) if references else []
    quantiles = None
    if "quantile" in chosen:
        quantiles = methods.activation_quantiles(runner, [s for s in refs if s.lang == tgt],
                                                 intervene.neuron_mask(ns, tgt, opts.setting), opts.quantile)
    planner = Planner(ns, store, opts, quantiles)
    rows = planner.grid(chosen)
    masks = np.stack([r.intervention.mask for r in rows[1:]])
    values = np.stack([r.intervention.values for r in rows[1:]])
    offsets = _offsets(rows[1:])
    identity = {"model": opts.model, **model.identity, "template": template.applied, "rows": [r.name for r in rows],
                "interventions": _digest(masks, values, *([] if offsets is None else [offsets])),
                "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:32],
                "references": [s.key for s in refs], "max_new_tokens": opts.max_new_tokens}
    from lna.interventions.steer import search

    runs.claim(out, identity, "lna-steer outputs", [OUTPUTS, STATE, search.FOLDER])
    say(f"steering {src} -> {tgt}: {len(rows)} settings x {len(prompts)} prompts, {len(refs)} reference responses, "
        f"with {backend} on {runner.device} -> {out}")
    keys = [q.key for q in questions]
    session = Session(runner, prompts, keys, refs, out, opts)
    with writing(out):
        grid = session.measure(rows, out / STATE)
        max_ppl, basis = _ppl_threshold(grid, refs, tgt, opts)
        session.judge(rows, grid, max_ppl)
        found = None
        if opts.search is not None:
            found = search.run(session, planner, chosen, grid, rows, max_ppl, opts.search)
        session.write_outputs()
    from lna.interventions.steer import table

    result = table.table(rows, questions, session, grid, refs, src, tgt)
    result.update({"model": opts.model, "neurons": str(opts.neurons), "store": str(opts.store), "from": src, "to": tgt,
                   "setting": opts.setting, "value": opts.value, "methods": list(chosen), "backend": backend,
                   "dtype": dtype, "max_new_tokens": opts.max_new_tokens, "prompts": len(prompts),
                   "references": len(refs), "templates": templates,
                   "thresholds": judge.thresholds_record(judge.Thresholds(), max_ppl, basis),
                   "layer_groups": {name: layers for name, layers in planner.groups},
                   "examples": {r.name: session.texts[f"{r.name}|{questions[0].key}"] for r in rows}})
    if quantiles is not None:
        result["quantile"] = opts.quantile
    if found is not None:
        result["search"] = found
    files = table.write(result, out, title=f"{info.display}: {src} -> {tgt}")
    say(f"wrote {', '.join(files)} to {out}")
    for lang in empty:  # said with the result it weakens (a failed run says only its error)
        note(f"{opts.neurons}: the {opts.setting} set of {lang} is empty, so steering "
             f"{'from' if lang == src else 'to'} it changed nothing")
    return result


def _refuse_moe(what: str):
    raise LnaError(f"{what}, but --neurons holds a dense model's neuron sets; steer a mixture-of-experts model with "
                   "the sets of `lna experts STORE -o DIR` (--neurons DIR --value constant; docs/moe.md)")


def _ppl_threshold(grid: dict, refs, tgt: str, opts: Options) -> tuple:
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

    def __init__(self, runner, prompts, keys, refs, out: Path, opts: Options):
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
        offsets = _offsets(live)
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
def _offsets(rows):
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


def _generate(runner, prompts, keys, rows, ids, masks, values, out: Path, opts: Options, offsets=None) -> dict:
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
def _perplexities(runner, rows, ids, masks, values, prompts, keys, outputs, refs, out: Path, opts: Options,
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


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()[:32]

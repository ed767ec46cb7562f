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

import numpy as np

from lna.core import languages, runs
from lna.core.atomic import writing
from lna.core.errors import LnaError, note
from lna.core.progress import sayer
from lna.identification import neurons
from lna.inputs import responses
from lna.interventions import expert_ablate, expert_steer, intervene, langid
from lna.interventions.steer import judge, methods
from lna.interventions.steer.inputs import check_templates, questions_of, references_of
from lna.interventions.steer.methods import Planner
from lna.interventions.steer.session import OUTPUTS, STATE, Session, digest, ppl_threshold, row_offsets
from lna.models.fingerprint import check_runner
from lna.runners.options import RunnerOptions, open_runner, resolve


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
    say, out, src, tgt = begin(opts)
    chosen = _check_options(opts)
    ns = neurons.load(opts.neurons)
    from lna.storage.store import open_store

    store = open_store(opts.store)
    empty = _check_store(store, ns, src, tgt, chosen, opts)
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
    runner = model.runner
    check_sources(opts, runner, ns.source, store.meta)
    if "diffmean" in chosen and model.backend != "hf":
        raise LnaError(f"--methods diffmean adds to activations, which only the transformers backend does; "
                       f"pass --backend hf, or leave diffmean out (this run would use {model.backend})")
    templates, prompts, refs = encode(questions, references, model.template, runner, opts)
    quantiles = None
    if "quantile" in chosen:
        quantiles = methods.activation_quantiles(runner, [s for s in refs if s.lang == tgt],
                                                 intervene.neuron_mask(ns, tgt, opts.setting), opts.quantile)
    planner = Planner(ns, store, opts, quantiles)
    rows = planner.grid(chosen)
    offsets = row_offsets(rows[1:])
    arrays = [np.stack([r.intervention.mask for r in rows[1:]]), np.stack([r.intervention.values for r in rows[1:]]),
              *([] if offsets is None else [offsets])]
    from lna.interventions.steer import search

    session = start(opts, out, model, rows, digest(*arrays), questions, prompts, refs, [search.FOLDER],
                    f"steering {src} -> {tgt}")
    find = None
    if opts.search is not None:
        def find(grid, max_ppl):
            return search.run(session, planner, chosen, grid, rows, max_ppl, opts.search)
    grid, max_ppl, basis, found = measure(session, rows, tgt, find)
    extra = {"quantile": opts.quantile} if quantiles is not None else {}
    if found is not None:
        extra["search"] = found
    result = finish(opts, session, model, rows, questions, grid, (max_ppl, basis), list(chosen), planner.groups,
                    templates, extra, title=f"{info.display}: {src} -> {tgt}")
    for lang in empty:  # said with the result it weakens (a failed run says only its error)
        note(f"{opts.neurons}: the {opts.setting} set of {lang} is empty, so steering "
             f"{'from' if lang == src else 'to'} it changed nothing")
    return result


def _check_options(opts: Options) -> tuple:
    """The dense run's own options, checked before anything is read; the chosen methods."""
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
    return chosen


def _check_store(store, ns, src: str, tgt: str, chosen, opts: Options) -> list:
    """One line if the store cannot serve the run; the languages whose neuron set is empty."""
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
    return empty


# -- the steps the dense and the mixture-of-experts runs share ----------------------------------------
def begin(opts: Options) -> tuple:
    """(say, output folder, source code, target code): the opening checks of every lna-steer run."""
    say = sayer(opts.progress)
    out = runs.out_folder(opts.out)
    langid.check()
    src, tgt = languages.code_of(opts.source), languages.code_of(opts.target)
    if src == tgt:
        raise LnaError(f"--from and --to are both {src}: steer from one language to another")
    opts.source, opts.target = src, tgt
    return say, out, src, tgt


def check_sources(opts: Options, runner, neuron_source, store_meta) -> None:
    """The neuron sets and the store were made from the model loaded (unless --allow-other-model)."""
    if opts.allow_other_model:
        return
    for what, source in ((opts.neurons, neuron_source), (opts.store, store_meta)):
        try:
            check_runner(source, runner, f"{what} and --model {opts.model}")
        except LnaError as err:
            raise LnaError(f"{err}; pass --allow-other-model to steer anyway") from None


def encode(questions, references, template, runner, opts: Options) -> tuple:
    """(templates record, prompt ids, reference samples) under the runner's tokenizer."""
    templates = check_templates(questions, references, template, opts)
    prompts = [responses.encode(runner.tokenizer, q.render(template)) for q in questions]
    refs = responses.samples(responses.tokenized(references, runner.tokenizer, template)) if references else []
    return templates, prompts, refs


def start(opts: Options, out, model, rows, interventions: str, questions, prompts, refs, more_outputs, doing: str):
    """Claims the output folder for this run's identity (a rerun with other settings is refused)
    and says what runs; the Session that measures it."""
    identity = {"model": opts.model, **model.identity, "template": model.template.applied,
                "rows": [r.name for r in rows], "interventions": interventions,
                "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:32],
                "references": [s.key for s in refs], "max_new_tokens": opts.max_new_tokens}
    runs.claim(out, identity, "lna-steer outputs", [OUTPUTS, STATE, *more_outputs])
    say = sayer(opts.progress)
    say(f"{doing}: {len(rows)} settings x {len(prompts)} prompts, {len(refs)} reference responses, "
        f"with {model.backend} on {model.runner.device} -> {out}")
    return Session(model.runner, prompts, [q.key for q in questions], refs, out, opts)


def measure(session: Session, rows, tgt: str, then=None) -> tuple:
    """(grid, max_ppl, its basis, then's result): every row generated, scored and judged, and
    outputs.jsonl rewritten whole; `then(grid, max_ppl)` runs before that (the search)."""
    with writing(session.out):
        grid = session.measure(rows, session.out / STATE)
        max_ppl, basis = ppl_threshold(grid, session.refs, tgt, session.opts)
        session.judge(rows, grid, max_ppl)
        found = then(grid, max_ppl) if then is not None else None
        session.write_outputs()
    return grid, max_ppl, basis, found


def finish(opts: Options, session: Session, model, rows, questions, grid, threshold: tuple, method_names: list,
           groups, templates, extra: dict, title: str) -> dict:
    """The table (steer.json, .csv, .md, .png) written all or nothing; its record."""
    from lna.interventions.steer import table

    src, tgt = opts.source, opts.target
    result = table.table(rows, questions, session, grid, session.refs, src, tgt)
    result.update({"model": opts.model, "neurons": str(opts.neurons), "store": str(opts.store), "from": src, "to": tgt,
                   "setting": opts.setting, "value": opts.value, "methods": method_names, "backend": model.backend,
                   "dtype": model.dtype, "max_new_tokens": opts.max_new_tokens, "prompts": len(session.prompts),
                   "references": len(session.refs), "templates": templates,
                   "thresholds": judge.thresholds_record(judge.Thresholds(), *threshold),
                   "layer_groups": {name: layers for name, layers in groups},
                   "examples": {r.name: session.texts[f"{r.name}|{questions[0].key}"] for r in rows}})
    result.update(extra)
    files = table.write(result, session.out, title=title)
    sayer(opts.progress)(f"wrote {', '.join(files)} to {session.out}")
    return result


def _refuse_moe(what: str):
    raise LnaError(f"{what}, but --neurons holds a dense model's neuron sets; steer a mixture-of-experts model with "
                   "the sets of `lna experts STORE -o DIR` (--neurons DIR --value constant; docs/moe.md)")



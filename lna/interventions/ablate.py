"""lna-ablate: switch each language's neurons off and measure perplexity per target language.

For a baseline (nothing deactivated) and for every (setting, language) neuron set, the
response tokens of every target language are force-decoded with SiLU(gate) of the set's
neurons zeroed before the product with up (docs/method.md, "Masked perplexity"). A cell of
the matrix is the token-weighted perplexity exp(sum NLL / tokens) of one target language
with one row's set deactivated; `change` subtracts the baseline row.

Cost: one forward over all samples per distinct mask (lna.interventions.masked_nll). Identical masks are computed once
(e.g. a language without related neurons has the same set in both settings) and an empty
set is the baseline itself (nothing to zero, so its row equals the baseline exactly). All
masks of a chunk of samples go to the runner in one call with per-sample mask ids, so rows
of different settings share batches through the masked kernel.

Resume: per-sample NLLs of every mask are kept in DIR/nll.npz (lna.interventions.ablate_state);
a rerun checks that the model, dtype, masks and samples are the same, computes the missing
cells only, and sums in sample order, so its result equals an uninterrupted run's.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lna.core import lock, runs
from lna.core.atomic import staged_dir
from lna.core.errors import LnaError, note
from lna.core.progress import sayer
from lna.identification import neurons
from lna.inputs import data, responses
from lna.interventions import ablate_state, expert_ablate
from lna.interventions.masked_nll import evaluate, predicted
from lna.models import loading
from lna.models.fingerprint import check_runner
from lna.runners.options import RunnerOptions, open_runner, resolve

SETTINGS = ("specific", "specific+related")


@dataclass(kw_only=True)
class Options(RunnerOptions):
    neurons: str
    out: str
    responses: str | None = None  # lna-profile's responses JSONL (default: beside the neurons' store)
    dataset: str | None = None  # or a dataset that carries responses
    langs: str | None = None  # targets (and deactivated rows) to keep; default all
    settings: tuple = SETTINGS  # "specific", "specific+related" or a neuron-set JSON file
    limit: int | None = None  # questions per language (quick runs)
    checkpoint_every: float = 60.0
    allow_other_model: bool = False
    progress: bool = True


# -- neuron sets -> masks --------------------------------------------------------------------
def setting_sets(ns: neurons.NeuronSets, setting: str, layers: int, width: int) -> tuple[str, dict]:
    """(name, {lang: per-layer index arrays}) of a setting: "specific" (N = 1 neurons),
    "specific+related" (every listed neuron), or a JSON file of sets (lna-identify's, or the
    released {lang: [[layer 0], ...]} layout) named by its file stem."""
    if setting == "specific":
        return setting, ns.split("specific")
    if setting == "specific+related":
        return setting, ns.sets
    path = Path(setting)
    if not path.is_file():
        raise LnaError(f"--setting {setting!r}: use specific, specific+related or a neuron-set JSON file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise LnaError(f"{path}: not a neuron-set JSON file ({err})") from None
    if isinstance(obj, dict) and "sets" not in obj:  # the released layout: {lang: per-layer lists}
        depth = {len(v) if isinstance(v, list) else -1 for v in obj.values()}
        top = max((i for v in obj.values() if isinstance(v, list) for layer in v if isinstance(layer, list)
                   for i in layer if isinstance(i, int)), default=-1)
        if len(depth) == 1 and depth != {-1} and (depth != {layers} or top >= width):
            raise LnaError(f"{path}: sets of {depth.pop()} layers with neuron indices up to {top}, but the model "
                           f"has {layers} x {width}; ablate them on the model they came from")
        obj = {"method": "given", "top_rate": 0, "lambda": None, "tau": 0, "languages": list(obj),
               "layers": layers, "neurons": width, "sets": obj, "general": [[]] * layers}
    given = neurons.from_json(obj, str(path))
    check_shape(given, layers, width, str(path))
    return path.stem, given.sets


def check_shape(ns: neurons.NeuronSets, layers: int, width: int, where: str, model: str = "the model") -> None:
    if (ns.layers, ns.neurons) != (layers, width):
        source = ns.source.get("model")
        raise LnaError(f"{where}: neuron sets of {ns.layers} layers x {ns.neurons} neurons, but {model} has "
                       f"{layers} x {width}; ablate them on the model they came from"
                       + (f" ({source})" if source else "") + " or identify this model's neurons")


@dataclass
class Plan:
    """Distinct masks and which one each (setting, language) row uses (-1: the baseline)."""

    masks: np.ndarray  # bool [n_masks, layer, neuron]
    ids: dict  # setting -> {lang: mask id}

    @property
    def n_forward(self) -> int:
        """Forward settings per sample: the baseline and every distinct non-empty mask."""
        return 1 + len(self.masks)


def plan(settings: dict, layers: int, width: int) -> Plan:
    """Masks for {setting: {lang: per-layer indices}}, identical masks merged, empty ones
    mapped to the baseline."""
    masks, seen, ids = [], {}, {}
    for name, sets in settings.items():
        ids[name] = {}
        for lang, per_layer in sets.items():
            mask = np.zeros((layers, width), bool)
            for layer, idx in enumerate(per_layer):
                mask[layer, np.asarray(idx, np.int64)] = True
            if not mask.any():
                ids[name][lang] = -1
                continue
            key = np.packbits(mask).tobytes()
            if key not in seen:
                seen[key] = len(masks)
                masks.append(mask)
            ids[name][lang] = seen[key]
    return Plan(np.stack(masks) if masks else np.zeros((0, layers, width), bool), ids)


# -- matrices ----------------------------------------------------------------------------------
def matrices(nll: np.ndarray, samples, targets: list, rows: list, p: Plan) -> dict:
    """The ppl.json contract: {"languages": targets, "settings": {name: {"rows", "ppl", "change"}}}."""
    lang_of = np.array([s.lang for s in samples])
    tokens = np.array([predicted(s) for s in samples], np.float64)
    # Summed in sample order: the same numbers whatever the chunking or resume history.
    sums = np.stack([nll[:, lang_of == t].sum(axis=1) for t in targets], axis=1)  # [1 + n_masks, target]
    count = np.array([tokens[lang_of == t].sum() for t in targets])
    if not count.all():
        raise LnaError(f"no response tokens for {', '.join(t for t, n in zip(targets, count) if not n)}")
    ppl = np.exp(sums / count)
    out = {"languages": list(targets), "settings": {}}
    for name, ids in p.ids.items():
        names = ["baseline"] + [lang for lang in rows if lang in ids]
        table = ppl[[0] + [ids[lang] + 1 for lang in names[1:]]]
        out["settings"][name] = {"rows": names, "ppl": table.tolist(), "change": (table - table[0]).tolist()}
    return out


def ablate(runner, samples, settings: dict, targets: list | None = None) -> dict:
    """The deactivation experiment in memory: `settings` {name: {lang: per-layer neuron
    indices}}, targets default to the samples' languages. Returns the ppl.json dict."""
    samples = list(samples)
    targets = targets or list(dict.fromkeys(s.lang for s in samples))
    p = plan(settings, runner.layers, runner.neurons)
    nll = evaluate(runner, samples, p.masks)
    rows = list(dict.fromkeys(lang for sets in settings.values() for lang in sets))
    return matrices(nll, samples, targets, rows, p)


# -- the command --------------------------------------------------------------------------------
def run(opts: Options) -> Path:
    """Validate everything, then compute (resumably) and write DIR/ppl.json, CSVs, heatmaps."""
    say = sayer(opts.progress)
    lock.acquire(opts.out, "ablation folder")  # first: a device, FIFO or socket is refused as such
    out = runs.out_folder(opts.out)
    if expert_ablate.is_expert_sets(opts.neurons):  # `lna experts` sets: a mixture-of-experts model
        return _run_experts(opts, out)
    ns = neurons.load(opts.neurons)
    info = resolve(opts)
    expert_ablate.refuse_dense_sets(info, opts.neurons)
    check_shape(ns, info.layers, info.neurons, opts.neurons, info.name)
    check_source_model(ns, info, opts)
    settings = dict(setting_sets(ns, s, info.layers, info.neurons) for s in dict.fromkeys(opts.settings))

    source, questions = _questions(opts, ns, say)
    targets, rows, settings = _rows(opts, questions, settings, "neuron set")

    model = open_runner(opts, info)
    runner = model.runner
    if not opts.allow_other_model:
        try:
            check_runner(ns.source, runner, f"{opts.neurons} and --model {opts.model}")
        except LnaError as err:
            raise LnaError(f"{err}; pass --allow-other-model to ablate them anyway") from None
    samples = _samples(questions, model, targets, source)
    p = plan(settings, runner.layers, runner.neurons)
    state, identity, nll = ablate_state.start(out, model.identity, ablate_state.mask_digest(p.masks), samples,
                                              p.n_forward)
    todo = [s for i, s in enumerate(samples) if np.isnan(nll[:, i]).any()]
    shared = sum(len(ids) for ids in p.ids.values()) - len(p.masks)
    say(f"ablating {len(rows)} languages x {len(settings)} settings = {p.n_forward} forward settings "
        f"(baseline included; {shared} empty or duplicate sets shared) over {sum(map(predicted, samples)):,} "
        f"response tokens of {len(samples):,} samples ({len(samples) - len(todo):,} done) "
        f"with {model.backend} on {runner.device} -> {out}")
    nll = ablate_state.measure(runner, samples, p, nll, state, identity, opts)
    deactivated = {name: {lang: int(sum(len(a) for a in per_layer)) for lang, per_layer in sets.items()}
                   for name, sets in settings.items()}
    _finish(opts, out, info, model, source, ns.source, nll, samples, targets, rows, p, {"deactivated": deactivated})
    for name, sets in settings.items():  # said with the result it weakens (a failed run says only its error)
        empty = [lang for lang, per_layer in sets.items() if not sum(len(a) for a in per_layer)]
        if empty:
            note(f"{opts.neurons}: the {name} set of {', '.join(empty)} is empty, so deactivating it changed "
                 "nothing (its row equals the baseline)")
    return out


def _run_experts(opts: Options, out: Path) -> Path:
    """run() for the sets of `lna experts` on a mixture-of-experts model (expert_ablate):
    rows deactivate expert neurons, always-on neurons or whole experts."""
    say = sayer(opts.progress)
    info = resolve(opts)
    es, settings, checks = expert_ablate.prepare(opts, info)
    check_source_model(es, info, opts)
    source, questions = _questions(opts, es, say)
    targets, rows, settings = _rows(opts, questions, settings, "expert set")

    model = open_runner(opts, info)
    runner = model.runner
    expert_ablate.check_loaded(checks, runner, opts)
    samples = _samples(questions, model, targets, source)
    p = expert_ablate.plan(settings, runner, str(opts.neurons))
    state, identity, nll = ablate_state.start(out, model.identity, expert_ablate.digest(p.masks), samples, p.n_forward)
    say(f"ablating expert sets of {len(rows)} languages x {len(settings)} settings = {p.n_forward} forward "
        f"settings over {sum(map(predicted, samples)):,} response tokens of {len(samples):,} samples "
        f"with {model.backend} on {runner.device} -> {out}")
    nll = ablate_state.measure(runner, samples, p, nll, state, identity, opts)
    _finish(opts, out, info, model, source, es.source, nll, samples, targets, rows, p,
            {"deactivated": p.sizes, "deactivated_experts": {name: {lang: len(sets[lang][1]) for lang in sets}
                                                             for name, sets in settings.items()}})
    empty = [f"{name} {lang}" for name, sizes in p.sizes.items() for lang, n in sizes.items() if not n]
    if empty:  # said with the result it weakens, as for dense sets
        note(f"{opts.neurons}: the sets {', '.join(empty)} are empty, so deactivating them changed nothing "
             "(their rows equal the baseline)")
    return out


def _samples(questions, model, targets: list, source) -> list:
    """The questions' responses as samples under the runner's tokenizer and template; one line
    if a target language has no response tokens."""
    samples = responses.samples(responses.tokenized(questions, model.runner.tokenizer, model.template))
    empty = [t for t in targets if not any(s.lang == t and predicted(s) for s in samples)]
    if empty:
        raise LnaError(f"{source}: no response tokens for {', '.join(empty)}; leave them out with --langs")
    return samples


def _finish(opts: Options, out: Path, info, model, source, sets_source: dict, nll, samples, targets, rows, p,
            deactivated: dict) -> None:
    """The matrices and the run's record, written all or nothing (write_outputs)."""
    result = matrices(nll, samples, targets, rows, p)
    result.update({"model": opts.model, "neurons": str(opts.neurons), "data": str(source), "dtype": model.dtype,
                   "backend": model.backend, "forward_settings": p.n_forward, **deactivated,
                   "tokens": {t: int(sum(predicted(s) for s in samples if s.lang == t)) for t in targets}})
    if not sets_source.get("model"):
        note(f"{opts.neurons} names no source model, so nothing shows that its neurons are {info.name}'s; "
             "identify them from a store of this model for a checked run")
    files = write_outputs(result, out, title=info.display)
    sayer(opts.progress)(f"wrote {', '.join(files)} to {out}")


def _rows(opts: Options, questions, settings: dict, what: str) -> tuple:
    """(targets, deactivated rows, settings kept to those rows): the data's languages first,
    then the sets' others, as --langs keeps them."""
    targets = list(dict.fromkeys(q.lang for q in questions))
    wanted = None if opts.langs is None or opts.langs.strip().lower() == "all" else set(targets)
    listed = list(dict.fromkeys(lang for sets in settings.values() for lang in sets))
    rows = [lang for lang in targets if lang in listed] + [lang for lang in listed if lang not in targets]
    rows = [lang for lang in rows if wanted is None or lang in wanted]
    if not rows:
        raise LnaError(f"{opts.neurons}: no {what} for any of {', '.join(targets)}; check --langs")
    return targets, rows, {name: {lang: sets[lang] for lang in rows if lang in sets} for name, sets in settings.items()}


def check_source_model(ns: neurons.NeuronSets, info: loading.ModelInfo, opts: Options) -> None:
    """Refuse sets identified on another model (names resolving to the same folder agree)."""
    source = ns.source.get("model")
    if not source or source == info.name or opts.allow_other_model:
        return
    try:
        same = loading.resolve(source).path == info.path
    except LnaError:
        same = False
    if not same:
        raise LnaError(f"{opts.neurons}: neuron sets of {source}, not {info.name}; use --model {source}, "
                       "or pass --allow-other-model to ablate them on this model")


def _questions(opts: Options, ns: neurons.NeuronSets, say):
    """(where from, questions with responses): --responses, --dataset, or the responses file
    lna-profile wrote beside the store the neurons were identified from."""
    if opts.responses and opts.dataset:
        raise LnaError("give --responses FILE or --dataset, not both")
    spec = opts.responses or opts.dataset
    if spec is None:
        store = ns.source.get("store")
        beside = responses.path_beside(store) if store else None
        if beside is None or not beside.is_file():
            raise LnaError("no responses to measure: give --responses FILE (lna-profile writes it beside its "
                           "store) or --dataset with responses")
        spec = str(beside)
        say(f"responses: {spec} (beside the store {store})")
    if opts.responses and not Path(opts.responses).is_file():
        raise LnaError(f"--responses {opts.responses}: no such file (lna-profile writes X.responses.jsonl "
                       "beside its store X.zarr)")
    _, questions = data.load(spec, opts.langs, limit=opts.limit)
    missing = sorted({q.lang for q in questions} - {q.lang for q in questions if q.responses or q.response_ids})
    if missing:
        raise LnaError(f"{spec}: no responses for {', '.join(missing)}; ablation measures perplexity on "
                       "responses: run lna-profile first and pass its X.responses.jsonl with --responses")
    return spec, questions


# -- outputs --------------------------------------------------------------------------------------
def write_outputs(result: dict, out, title: str = "") -> list:
    """ppl.json, ppl-/change-SETTING.csv and change-SETTING.png, all or none (ppl.json last)."""
    from lna.reports import plots
    from lna.reports.tables import write_csv

    targets = result["languages"]
    with staged_dir(out) as tmp:
        for name, s in result["settings"].items():
            stem = _file_stem(name)
            for kind in ("ppl", "change"):
                write_csv(tmp / f"{kind}-{stem}.csv", ["deactivated", *targets],
                          [[row, *values] for row, values in zip(s["rows"], s[kind])])
            base, sizes = s["ppl"][0], result.get("deactivated", {}).get(name, {})
            rows = [f"{lang} ({sizes[lang]})" if lang in sizes else lang for lang in s["rows"][1:]]
            plots.heatmap(np.asarray(s["change"][1:]), rows,
                          [f"{t}\n{_short(p)}" for t, p in zip(targets, base)], tmp / f"change-{stem}.png",
                          title=f"{title}: PPL change, {name} neurons deactivated".lstrip(": "),
                          xlabel="Target language (baseline PPL)",
                          ylabel="Deactivated language (neurons)" if sizes else "Deactivated language",
                          colorbar="PPL change")
        (tmp / "ppl.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        return sorted(p.name for p in tmp.iterdir())


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "+-_." else "_" for c in name)


def _short(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"

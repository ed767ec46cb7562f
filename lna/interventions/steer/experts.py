"""lna-steer with the sets of `lna experts` on a mixture-of-experts model (docs/moe.md).

lna-steer's run (lna.interventions.steer.run: outputs, judgements, perplexities, table,
resume) with rows from lna.interventions.expert_steer: the source's expert and always-on
neurons zeroed, the target's set to each strength itself (--value constant: MoE stores keep
no activation sums, so there is no mean to multiply). Only the mean method's rows (off, then
set) exist here; --methods quantile / diffmean and --search are refused in one line.
"""
import hashlib
import json

from lna.core import languages, runs
from lna.core.atomic import writing
from lna.core.errors import LnaError
from lna.core.progress import sayer
from lna.inputs import responses
from lna.interventions import expert_ablate, expert_steer, intervene, langid
from lna.interventions.steer import judge, methods
from lna.interventions.steer.inputs import check_templates, questions_of, references_of
from lna.interventions.steer.methods import Row, row_name
from lna.interventions.steer.run import OUTPUTS, STATE, Options, Session, _digest, _ppl_threshold
from lna.models.fingerprint import check_runner
from lna.runners.options import open_runner, resolve


def run(opts: Options) -> dict:
    say = sayer(opts.progress)
    out = runs.out_folder(opts.out)
    langid.check()
    src, tgt = languages.code_of(opts.source), languages.code_of(opts.target)
    if src == tgt:
        raise LnaError(f"--from and --to are both {src}: steer from one language to another")
    opts.source, opts.target = src, tgt
    expert_steer.check_value(opts.value)
    if methods.parse(opts.methods) != ("mean",) or opts.search is not None:
        raise LnaError("--methods quantile/diffmean and --search are for dense models; on a mixture-of-experts model "
                       "lna-steer sets expert neurons to the --strengths themselves (--value constant)")
    es = expert_ablate.load(opts.neurons)
    sets = expert_ablate.setting_sets(es, opts.setting)[1]
    for lang in (src, tgt):
        if lang not in sets:
            raise LnaError(f"{opts.neurons}: no expert neuron set for {lang!r}: it has {', '.join(sets)}")
    from lna.storage.store import open_store

    store = open_store(opts.store)  # read for its model identity and its responses (the default references)
    info = resolve(opts)
    if not expert_ablate.is_moe(info):
        raise LnaError(f"{opts.neurons}: expert neuron sets (lna experts), but {info.name} is a dense model; "
                       "steer it with lna-identify's neuron sets")
    expert_ablate.check_shape(es.source, opts.neurons, info.name, info.layers)
    groups = intervene.parse_layers(opts.layers, info.layers)
    questions = questions_of(opts)
    references = references_of(opts, say)

    model = open_runner(opts, info)
    runner, backend, dtype, template = model.runner, model.backend, model.dtype, model.template
    expert_ablate.check_shape(es.source, opts.neurons, info.name, runner.layers, runner.layout)
    if not opts.allow_other_model:
        for what, source in ((opts.neurons, es.source), (opts.store, store.meta)):
            try:
                check_runner(source, runner, f"{what} and --model {opts.model}")
            except LnaError as err:
                raise LnaError(f"{err}; pass --allow-other-model to steer anyway") from None
    templates = check_templates(questions, references, template, opts)
    prompts = [responses.encode(runner.tokenizer, q.render(template)) for q in questions]
    refs = responses.samples(responses.tokenized(references, runner.tokenizer, template)) if references else []
    try:
        rows = [Row("baseline", "-", float("nan"), None)] + [
            Row(row_name("mean", name, s), name, s, expert_steer.intervention(runner, sets, src, tgt, s, layers),
                "-" if s is None else "constant", list(layers))
            for name, layers in groups for s in (None, *opts.strengths)]
    except LnaError as err:
        raise LnaError(f"{opts.neurons}: {err}; steer the model they came from") from None
    masks, values = expert_steer.stack([r.intervention for r in rows[1:]])
    identity = {"model": opts.model, **model.identity, "template": template.applied, "rows": [r.name for r in rows],
                "interventions": _digest(*masks, *values),
                "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:32],
                "references": [s.key for s in refs], "max_new_tokens": opts.max_new_tokens}
    runs.claim(out, identity, "lna-steer outputs", [OUTPUTS, STATE])
    say(f"steering {src} -> {tgt} through expert neurons: {len(rows)} settings x {len(prompts)} prompts, "
        f"{len(refs)} reference responses, with {backend} on {runner.device} -> {out}")
    keys = [q.key for q in questions]
    session = Session(runner, prompts, keys, refs, out, opts)
    with writing(out):
        grid = session.measure(rows, out / STATE)
        max_ppl, basis = _ppl_threshold(grid, refs, tgt, opts)
        session.judge(rows, grid, max_ppl)
        session.write_outputs()
    from lna.interventions.steer import table

    result = table.table(rows, questions, session, grid, refs, src, tgt)
    result.update({"model": opts.model, "neurons": str(opts.neurons), "store": str(opts.store), "from": src, "to": tgt,
                   "setting": opts.setting, "value": opts.value, "methods": ["constant"], "backend": backend,
                   "dtype": dtype, "max_new_tokens": opts.max_new_tokens, "prompts": len(prompts),
                   "references": len(refs), "templates": templates,
                   "thresholds": judge.thresholds_record(judge.Thresholds(), max_ppl, basis),
                   "layer_groups": {name: layers for name, layers in groups},
                   "examples": {r.name: session.texts[f"{r.name}|{questions[0].key}"] for r in rows}})
    files = table.write(result, out, title=f"{info.display}: {src} -> {tgt} (expert neurons)")
    say(f"wrote {', '.join(files)} to {out}")
    return result

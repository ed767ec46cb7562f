"""lna-steer with the sets of `lna experts` on a mixture-of-experts model (docs/moe.md).

lna-steer's run (the shared steps of lna.interventions.steer.run and its session,
lna.interventions.steer.session: outputs, judgements, perplexities, table, resume) with rows
from lna.interventions.expert_steer: the source's expert and always-on neurons zeroed, the
target's set to each strength itself (--value constant: MoE stores keep no activation sums,
so there is no mean to multiply). Only the mean method's rows (off, then
set) exist here; --methods quantile / diffmean and --search are refused in one line.
"""
from lna.interventions import expert_ablate, expert_steer, intervene
from lna.interventions.steer import methods
from lna.interventions.steer.inputs import questions_of, references_of
from lna.interventions.steer.methods import Row, row_name
from lna.interventions.steer.run import Options, begin, check_sources, encode, finish, measure, start
from lna.interventions.steer.session import digest
from lna.core.errors import LnaError
from lna.runners.options import open_runner, resolve


def run(opts: Options) -> dict:
    say, out, src, tgt = begin(opts)
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
    runner = model.runner
    expert_ablate.check_shape(es.source, opts.neurons, info.name, runner.layers, runner.layout)
    check_sources(opts, runner, es.source, store.meta)
    templates, prompts, refs = encode(questions, references, model.template, runner, opts)
    try:
        rows = [Row("baseline", "-", float("nan"), None)] + [
            Row(row_name("mean", name, s), name, s, expert_steer.intervention(runner, sets, src, tgt, s, layers),
                "-" if s is None else "constant", list(layers))
            for name, layers in groups for s in (None, *opts.strengths)]
    except LnaError as err:
        raise LnaError(f"{opts.neurons}: {err}; steer the model they came from") from None
    masks, values = expert_steer.stack([r.intervention for r in rows[1:]])
    session = start(opts, out, model, rows, digest(*masks, *values), questions, prompts, refs, [],
                    f"steering {src} -> {tgt} through expert neurons")
    grid, max_ppl, basis, _ = measure(session, rows, tgt)
    return finish(opts, session, model, rows, questions, grid, (max_ppl, basis), ["constant"], groups, templates, {},
                  title=f"{info.display}: {src} -> {tgt} (expert neurons)")

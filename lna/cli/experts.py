"""`lna experts STORE -o DIR`: language neurons inside experts and language experts of a
mixture-of-experts count store (docs/moe.md)."""
import click

from lna.cli.identify import identify_options, parse_identify_options


@click.command("experts")
@click.argument("store", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(),
              help="Folder for expert_neurons.json, language_experts.json and the two figures.")
@click.option("--min-routed", type=click.IntRange(1), default=100, show_default=True,
              help="An expert is judged only where every language routed at least this many tokens to it.")
@click.option("--ratio", type=click.FloatRange(1, min_open=True), default=3.0, show_default=True,
              help="A language expert's routing share for its language over its largest other share.")
@identify_options
def experts(store, out, min_routed, ratio, method, top_rate, tau_quantile, lam, langs, allow_partial):
    """Identify language neurons per expert neuron, and language-specific experts, in a MoE STORE."""
    import json
    from pathlib import Path

    from lna.core.atomic import atomic_file
    from lna.core.errors import LnaError
    from lna.identification import experts as ex
    from lna.storage.store import open_store

    options = parse_identify_options(method, top_rate, tau_quantile, lam, langs)
    counts = open_store(store, allow_partial=allow_partial, sums=False)
    if options.pop("langs") is not None:
        from lna.core.languages import parse_langs

        counts = counts.select(parse_langs(langs, counts.languages))
    neurons = ex.identify_experts(counts, min_routed=min_routed, **options)
    neurons.source["store"] = str(store)  # lna-ablate finds the responses beside it
    routing = ex.language_experts(counts, ratio=ratio, min_routed=min_routed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LnaError(f"{out}: exists and is not a folder; give a folder for the results")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"format": "lna-language-experts/1", "languages": routing.languages, "ratio": routing.ratio, "min_routed": routing.min_routed,
               "experts": {lang: a.tolist() for lang, a in routing.experts.items()},
               "routing_entropy": [[None if v != v else float(v) for v in row] for row in routing.entropy],
               "source": neurons.source}
    for name, record in (("expert_neurons.json", neurons.to_json()), ("language_experts.json", summary)):
        with atomic_file(out / name, "json") as tmp:
            tmp.write_text(json.dumps(record, indent=1))
    title = counts.meta.get("model_name") or counts.meta.get("model") or ""
    ex.plot_routing_entropy(routing, out / "routing_entropy.png", title)
    ex.plot_language_experts(routing, out / "language_experts.png", title)
    found = ", ".join(f"{lang} {len(neurons.sets[lang])}" for lang in neurons.languages)
    click.echo(f"expert neurons ({method}, {len(neurons.not_judged)} experts not judged): {found}")
    click.echo("language experts: " + ", ".join(f"{lang} {len(a)}" for lang, a in routing.experts.items()))
    click.echo(f"wrote {out}")

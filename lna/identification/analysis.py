"""Analyses of neuron sets (docs/method.md, "Analyses in the paper").

Per neuron, N is the number of languages whose set lists it. Among the selected neurons
N = 1 is language-specific and 1 < N < l language-related; general neurons (above tau for
all l languages) fill the column N = l of the shared-by-N counts, so the counts per N cover
the three types (Figures 3, 5 and 10 of the paper).
"""
import numpy as np

from lna.core.atomic import staged_dir
from lna.identification.neurons import NeuronSets
from lna.reports.tables import write_csv

TYPES = ("specific", "related", "general")


def shared_by_n(ns: NeuronSets) -> np.ndarray:
    """int [layer, N] for N = 0..l: neurons of each layer shared by exactly N languages
    (column 0 is always 0; column l holds the general neurons)."""
    K = len(ns.languages)
    out = np.zeros((ns.layers, K + 1), np.int64)
    for layer, (_, n) in enumerate(ns.shared_by()):
        out[layer] += np.bincount(n[n < K], minlength=K + 1)
        out[layer, K] = len(ns.general[layer])
    return out


def layer_types(ns: NeuronSets) -> dict:
    """{type: int [layer]} numbers of specific, related and general neurons per layer."""
    by_n = shared_by_n(ns)
    return {"specific": by_n[:, 1], "related": by_n[:, 2:-1].sum(axis=1), "general": by_n[:, -1]}


def type_sets(ns: NeuronSets) -> dict:
    """{type: set of (layer, neuron)} for overlap ratios."""
    out = {t: set() for t in TYPES}
    K = len(ns.languages)
    for layer, (idx, n) in enumerate(ns.shared_by()):
        out["specific"].update((layer, int(i)) for i in idx[n == 1])
        out["related"].update((layer, int(i)) for i in idx[(n > 1) & (n < K)])
        out["general"].update((layer, int(i)) for i in ns.general[layer])
    return out


def summary(ns: NeuronSets) -> str:
    """A few lines for the terminal: tau, lambda (and whether the search stopped at the top
    of its range), selected neurons that belong to no language, per-language sizes, neurons by N."""
    from lna.identification.identify import LAMBDA_RANGE

    K = len(ns.languages)
    lam = "-" if ns.lam is None else f"{ns.lam:g}"
    if ns.lam is not None and ns.lambda_auto:
        lo, hi = LAMBDA_RANGE
        lam += (f" (auto: the top of the searched range [{lo:g}, {hi:g}]; no lambda in it selects a neuron "
                "shared by all languages, so a larger one might do too)" if ns.lam >= hi else " (auto)")
    lines = [f"{ns.method}: tau {ns.tau:.6f} ({ns.tau_quantile:g} quantile), lambda {lam}, "
             f"top rate {ns.top_rate:g} of {ns.layers} x {ns.neurons} neurons"]
    selected = round(ns.layers * ns.neurons * ns.top_rate)
    listed = sum(len(idx) for idx, _ in ns.shared_by())
    if selected > listed:
        lines.append(f"  selected {selected} neurons: {listed} are above tau in some language; "
                     f"{selected - listed} ({100 * (selected - listed) / selected:.0f}%) are above tau in no "
                     "language and so belong to no set")
    sizes = ns.sizes()
    width = max(len(x) for x in ns.languages + ["language"])
    lines.append(f"  {'language':<{width}}  {'all':>6} {'specific':>8} {'related':>7}")
    for lang in ns.languages:
        s = sizes[lang]
        lines.append(f"  {lang:<{width}}  {s['all']:>6} {s['specific']:>8} {s['related']:>7}")
    total = shared_by_n(ns).sum(axis=0)
    by_n = ", ".join(f"{n}: {total[n]}" for n in range(1, K))
    lines.append(f"  neurons shared by N languages: {by_n}; general (N={K}): {total[K]}")
    return "\n".join(lines)


# -- tables -------------------------------------------------------------------------------
def layer_table(ns: NeuronSets) -> tuple[list, list]:
    types = layer_types(ns)
    rows = [[layer] + [int(types[t][layer]) for t in TYPES] for layer in range(ns.layers)]
    return ["layer", *TYPES], rows


def shared_table(ns: NeuronSets) -> tuple[list, list]:
    """Rows: N, neurons shared by N languages (all layers), then one column per layer."""
    by_n = shared_by_n(ns)
    K = len(ns.languages)
    header = ["N", "type", "neurons"] + [f"layer{i}" for i in range(ns.layers)]
    rows = [[n, _type_of(n, K), int(by_n[:, n].sum())] + [int(x) for x in by_n[:, n]] for n in range(1, K + 1)]
    return header, rows


def language_table(ns: NeuronSets) -> tuple[list, list]:
    sizes = ns.sizes()
    return ["language", "all", "specific", "related"], [
        [lang, sizes[lang]["all"], sizes[lang]["specific"], sizes[lang]["related"]] for lang in ns.languages]


def _type_of(n: int, K: int) -> str:
    return "specific" if n == 1 else "general" if n == K else "related"


# -- outputs ------------------------------------------------------------------------------
def write_report(ns: NeuronSets, out, *, with_neurons: bool = False) -> list:
    """CSV tables and figures of one set of neurons into folder `out`; returns the file names."""
    from lna.identification import neurons
    from lna.reports import plots
    from lna.models.loading import display_name

    with staged_dir(out) as tmp:
        write_csv(tmp / "layers.csv", *layer_table(ns))
        write_csv(tmp / "shared_by_n.csv", *shared_table(ns))
        write_csv(tmp / "languages.csv", *language_table(ns))
        name = display_name(ns.source.get("model_name") or ns.source.get("model") or "neurons")
        plots.layer_types(layer_types(ns), tmp / "layers.png", title=f"{name}: neurons per layer")
        plots.shared_by_n({name: shared_by_n(ns).sum(axis=0)[1:]}, tmp / "shared_by_n.png",
                          title=f"{name}: neurons shared by N languages")
        if with_neurons:
            neurons.save(ns, tmp / "neurons.json")
        return sorted(p.name for p in tmp.iterdir())


# -- before vs after (lna-compare) ----------------------------------------------------------------
def check_comparable(a: NeuronSets, b: NeuronSets, names=("base", "other")) -> None:
    """Same architecture and the same languages (else per-N and per-language numbers mislead)."""
    from lna.core.errors import LnaError

    if (a.layers, a.neurons) != (b.layers, b.neurons):
        raise LnaError(f"cannot compare {names[0]} ({a.layers} x {a.neurons} neurons) with {names[1]} "
                       f"({b.layers} x {b.neurons}): they are different architectures")
    if set(a.languages) != set(b.languages):
        raise LnaError(f"cannot compare {names[0]} ({', '.join(a.languages)}) with {names[1]} "
                       f"({', '.join(b.languages)}): identify both over the same languages (--langs)")


def layer_change_table(a: NeuronSets, b: NeuronSets, names) -> tuple[list, list]:
    """Figure 4: per layer and type, the counts of both and the change (b - a)."""
    ta, tb = layer_types(a), layer_types(b)
    header = ["layer"] + [f"{t}_{n}" for t in TYPES for n in (*names, "change")]
    rows = [[layer] + [int(x) for t in TYPES for x in (ta[t][layer], tb[t][layer], tb[t][layer] - ta[t][layer])]
            for layer in range(a.layers)]
    return header, rows


def shared_change_table(a: NeuronSets, b: NeuronSets, names) -> tuple[list, list]:
    """Figures 5 and 10: neurons shared by N languages in both, and the change."""
    K = len(a.languages)
    na, nb = shared_by_n(a).sum(axis=0), shared_by_n(b).sum(axis=0)
    return ["N", "type", *names, "change"], [
        [n, _type_of(n, K), int(na[n]), int(nb[n]), int(nb[n] - na[n])] for n in range(1, K + 1)]


def language_change_table(a: NeuronSets, b: NeuronSets, names, trained=()) -> tuple[list, list]:
    """Per language: specific and related set sizes in both, and the change."""
    sa, sb = a.sizes(), b.sizes()
    header = ["language", "trained"] + [f"{t}_{n}" for t in ("specific", "related") for n in (*names, "change")]
    rows = []
    for lang in a.languages:
        row = [lang, "yes" if lang in trained else "no"]
        for t in ("specific", "related"):
            row += [sa[lang][t], sb[lang][t], sb[lang][t] - sa[lang][t]]
        rows.append(row)
    return header, rows


def alignment_table(a: NeuronSets, b: NeuronSets, names, trained) -> tuple[list, list]:
    """Table 2 (spontaneous alignment): mean change of the specific and related set sizes of
    the languages used in alignment and of the others."""
    from lna.core.errors import LnaError

    missing = [x for x in trained if x not in a.languages]
    if missing:
        raise LnaError(f"--trained-langs {', '.join(missing)}: not among the compared languages "
                       f"({', '.join(a.languages)})")
    _, rows = language_change_table(a, b, names, trained)
    out = []
    for group, members in (("trained", [r for r in rows if r[1] == "yes"]), ("other", [r for r in rows if r[1] == "no"])):
        if members:
            out.append([group, " ".join(r[0] for r in members), round(float(np.mean([r[4] for r in members])), 2),
                        round(float(np.mean([r[7] for r in members])), 2)])
    return ["group", "languages", "specific_change", "related_change"], out


def english_table(models: dict) -> tuple[list, list]:
    """Table 3: mean numbers of specific and related neurons, English vs the other languages."""
    rows = []
    for name, ns in models.items():
        sizes = ns.sizes()
        for group, langs in (("English", [x for x in ns.languages if x == "en"]),
                             ("non-English", [x for x in ns.languages if x != "en"])):
            if langs:
                rows.append([name, group, round(float(np.mean([sizes[x]["specific"] for x in langs])), 2),
                             round(float(np.mean([sizes[x]["related"] for x in langs])), 2)])
    return ["model", "group", "specific", "related"], rows


def overlap_table(a: NeuronSets, b: NeuronSets, names) -> tuple[list, list]:
    """Table 4 (stability): per type, how many neurons the two have in common.

    overlap = |A & B| / min(|A|, |B|); also |A & B| over each side and the Jaccard index.
    "language sets" compares the (language, layer, neuron) memberships of the sets.
    """
    sa, sb = type_sets(a), type_sets(b)
    sa["language sets"] = {(x, i, int(h)) for x in a.languages for i in range(a.layers) for h in a.sets[x][i]}
    sb["language sets"] = {(x, i, int(h)) for x in a.languages for i in range(b.layers) for h in b.sets[x][i]}
    rows = []
    for t in sa:
        A, B = sa[t], sb[t]
        inter = len(A & B)

        def ratio(d):
            return round(inter / d, 4) if d else ""

        rows.append([t, len(A), len(B), inter, ratio(min(len(A), len(B))), ratio(len(A)), ratio(len(B)),
                     ratio(len(A | B))])
    return ["type", *names, "shared", "overlap", f"of_{names[0]}", f"of_{names[1]}", "jaccard"], rows


def series_table(models: dict) -> tuple[list, list]:
    """Figures 12-14 as a table: per model of a series (the base first, then checkpoints in
    order), layer and type, the number of neurons and its change from the base."""
    names = list(models)
    base = layer_types(models[names[0]])
    rows = []
    for name in names:
        types = layer_types(models[name])
        for t in TYPES:
            rows += [[name, layer, t, int(types[t][layer]), int(types[t][layer] - base[t][layer])]
                     for layer in range(len(types[t]))]
    return ["model", "layer", "type", "neurons", "change"], rows


def write_series(models: dict, folder) -> list:
    """series.csv, series_<type>.png (change per layer along the series, one line a
    checkpoint: Figures 12-14) and series_totals.png (neurons per type along the series)."""
    from pathlib import Path

    from lna.reports import plots

    folder = Path(folder)
    header, rows = series_table(models)
    write_csv(folder / "series.csv", header, rows)
    names = list(models)
    files = ["series.csv"]
    for t in TYPES:
        lines = {n: [r[4] for r in rows if r[0] == n and r[2] == t] for n in names[1:]}
        plots.series_lines(lines, folder / f"series_{t}.png", t,
                           title=f"{plots.LABELS[t]} neurons: change per layer from {names[0]}")
        files.append(f"series_{t}.png")
    totals = {t: [sum(r[3] for r in rows if r[0] == n and r[2] == t) for n in names] for t in TYPES}
    plots.series_totals(names, totals, folder / "series_totals.png", title="Neurons per type along the series")
    return files + ["series_totals.png"]


def write_comparison(models: dict, out, *, trained=None, series: bool = False) -> tuple[list, str]:
    """Compare the first model of `models` ({name: NeuronSets}) with each of the others;
    with `series`, the others are checkpoints in order and the series figures are drawn too.

    Returns the written file names and a printable summary.
    """
    from lna.reports import plots

    names = list(models)
    base_name, base = names[0], models[names[0]]
    for name in names[1:]:
        check_comparable(base, models[name], (base_name, name))
    lines = []
    with staged_dir(out) as tmp:
        header = ["model"] + list(TYPES) + [f"N={n}" for n in range(1, len(base.languages) + 1)]
        totals_rows = []  # one row per model: a checkpoint series reads down this table
        for name, ns in models.items():
            totals = {t: int(v.sum()) for t, v in layer_types(ns).items()}
            totals_rows.append([name] + [totals[t] for t in TYPES] + [int(x) for x in shared_by_n(ns).sum(axis=0)[1:]])
        write_csv(tmp / "models.csv", header, totals_rows)
        write_csv(tmp / "english.csv", *english_table(models))
        for name in names[1:]:
            other = models[name]
            pair = (base_name, name)
            suffix = "" if len(names) == 2 else f".{name}"
            h, rows = layer_change_table(base, other, pair)
            write_csv(tmp / f"layer_change{suffix}.csv", h, rows)
            changes = {t: [r[1 + 3 * i + 2] for r in rows] for i, t in enumerate(TYPES)}
            plots.layer_change(changes, tmp / f"layer_change{suffix}.png", title=f"{name} - {base_name}: change per layer")
            h, rows = shared_change_table(base, other, pair)
            write_csv(tmp / f"shared_by_n_change{suffix}.csv", h, rows)
            plots.shared_change([r[4] for r in rows], tmp / f"shared_by_n_change{suffix}.png",
                                title=f"{name} - {base_name}: neurons shared by N languages")
            plots.shared_by_n({base_name: [r[2] for r in rows], name: [r[3] for r in rows]},
                              tmp / f"shared_by_n{suffix}.png", title="Neurons shared by N languages")
            write_csv(tmp / f"languages{suffix}.csv", *language_change_table(base, other, pair, trained or ()))
            ov_h, ov_rows = overlap_table(base, other, pair)
            write_csv(tmp / f"overlap{suffix}.csv", ov_h, ov_rows)
            lines.append(f"{name} vs {base_name}:")
            per_type = ", ".join(f"{t} {sum(changes[t]):+d}" for t in TYPES)
            lines.append(f"  change in neurons: {per_type}")
            lines.append("  change in neurons shared by N: " + ", ".join(f"{r[0]}: {r[4]:+d}" for r in rows))
            if trained:
                al_h, al_rows = alignment_table(base, other, pair, trained)
                write_csv(tmp / f"spontaneous_alignment{suffix}.csv", al_h, al_rows)
                for r in al_rows:
                    lines.append(f"  {r[0]} languages ({r[1]}): specific {r[2]:+g}, related {r[3]:+g} on average")
            lines.append("  overlap (|A & B| / min): " + ", ".join(
                f"{r[0]} {r[4] if r[4] != '' else 'n/a (none on one side)'}" for r in ov_rows))
        for r in english_table(models)[1]:
            lines.append(f"{r[0]}: {r[1]} mean specific {r[2]:g}, related {r[3]:g}")
        if series:
            write_series(models, tmp)
            totals = {n: {t: int(v.sum()) for t, v in layer_types(ns).items()} for n, ns in models.items()}
            lines.append("series (specific / related / general): " + ", ".join(
                f"{n} {v['specific']}/{v['related']}/{v['general']}" for n, v in totals.items()))
        files = sorted(p.name for p in tmp.iterdir())
    return files, "\n".join(lines)

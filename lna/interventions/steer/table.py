"""lna-steer's table (JSON, CSV, Markdown) and figure, written all or nothing.

A row per setting: the headline share of outputs fluent in the target language (all three
judgements of lna.interventions.steer.judge pass), beside what each judgement found alone -
the language shares (target, source, none: the identifier unsure or no letters, mixed),
the degenerate share and the share the unsteered model finds implausible (perplexity above
the run's threshold) - and the perplexities.
"""
import json

import numpy as np

from lna.core.atomic import staged_dir
from lna.interventions import langid
from lna.interventions.steer import judge

COLUMNS = [("row", "setting"), ("share_fluent_target", "fluent in target"), ("share_target", "in target"),
           ("share_source", "in source"), ("share_none", "none"), ("share_mixed", "mixed"),
           ("share_degenerate", "degenerate"), ("share_implausible", "PPL too high"),
           ("share_target_script", "target script"), ("ppl_source", "PPL source refs"),
           ("ppl_target", "PPL target refs"), ("ppl_outputs", "PPL of outputs"), ("neurons_zeroed", "zeroed"),
           ("neurons_set", "set"), ("neurons_shifted", "shifted")]
EXTRA = ["method", "layers", "strength", "outputs", "share_label_target"]
SEARCH = [("method", "method"), ("layers", "layers"), ("goal", "goal"), ("strength", "smallest strength"),
          ("best_strength", "best strength"), ("best_share", "best fluent in target"),
          ("ppl_source_ratio", "PPL source refs x"), ("ppl_target_ratio", "PPL target refs x"), ("tried", "tried")]


def _ppl(values, tokens):
    return float(np.exp(values.sum() / tokens.sum())) if tokens.sum() else None


def summarize(row, keys: list, session, nll_refs, nll_outputs, refs, src: str, tgt: str) -> dict:
    """One table row from a setting's judged outputs and NLL sums (refs [ref], outputs [prompt])."""
    ref_lang = np.array([s.lang for s in refs])
    ref_tokens = np.array([len(s.response) for s in refs], np.float64)
    names = [f"{row.name}|{k}" for k in keys]
    verdicts = [session.judged[k] for k in names]
    found = [v["language"]["language"] for v in verdicts]
    lengths = np.array([len(session.tokens[k]) for k in names], np.float64)  # each output token is scored
    iv = row.intervention

    def share(flags):
        return float(np.mean(flags))

    return {
        "row": row.name, "method": row.method, "layers": row.layers,
        "strength": None if row.strength is None or np.isnan(row.strength) else row.strength,
        "outputs": len(names), "share_fluent_target": share([v["fluent_target"] for v in verdicts]),
        "share_target": share([f == tgt for f in found]), "share_source": share([f == src for f in found]),
        "share_none": share([f == langid.NONE for f in found]), "share_mixed": share([f == judge.MIXED for f in found]),
        "share_degenerate": share([v["degeneracy"]["degenerate"] for v in verdicts]),
        "share_implausible": share([not v["ppl_ok"] for v in verdicts]),
        "share_label_target": share([v["language"]["label"] == tgt for v in verdicts]),
        "share_target_script": share([langid.script_share(session.texts[k], tgt)[0] > 0.5 for k in names]),
        "ppl_source": _ppl(nll_refs[ref_lang == src], ref_tokens[ref_lang == src]) if refs else None,
        "ppl_target": _ppl(nll_refs[ref_lang == tgt], ref_tokens[ref_lang == tgt]) if refs else None,
        "ppl_outputs": _ppl(np.nan_to_num(nll_outputs), lengths),
        "neurons_set": 0 if iv is None else int((iv.mask & (iv.values != 0)).sum()),
        "neurons_zeroed": 0 if iv is None else int((iv.mask & (iv.values == 0)).sum()),
        "neurons_shifted": 0 if iv is None or iv.offsets is None else int((iv.offsets != 0).sum()),
        "languages_found": {lang: found.count(lang) for lang in sorted(set(found))},
    }


def table(rows, questions, session, grid: dict, refs, src, tgt) -> dict:
    keys = [q.key for q in questions]
    return {"rows": [summarize(row, keys, session, grid["nll"]["refs"][r], grid["nll"]["outputs"][r], refs, src, tgt)
                     for r, row in enumerate(rows)]}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.3g}"
    if isinstance(value, list):
        return " ".join(f"{s:g}:{v:.2f}" for s, v in value)
    return str(value)


def _grid(columns, records) -> list:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_cell(rec.get(key)) for key, _ in columns) + " |" for rec in records]


def markdown(result: dict) -> str:
    lines = _grid(COLUMNS, result["rows"])
    if result.get("search"):
        lines += ["", f"Strength search (share of outputs fluent in {result['to']}; tried: strength:share):", ""]
        lines += _grid(SEARCH, result["search"])
    return "\n".join(lines) + "\n"


def figure(result: dict, path, title: str = "") -> None:
    """Share of outputs fluent in the target (solid) and in the target language (dashed)
    against strength, one colour per method and layer group; 'off' (source zeroed only) at 0,
    the baseline as a dotted line."""
    from lna.reports.plots import SERIES, _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    rows = result["rows"]
    base = rows[0]
    series = list(dict.fromkeys((r["method"], r["layers"]) for r in rows[1:] if r["method"] != "-"))
    for i, (method, group) in enumerate(series):
        color = SERIES[i % len(SERIES)]
        mine = [r for r in rows[1:] if r["layers"] == group and r["method"] in ("-", method)]
        xs = [0.0 if r["strength"] is None else r["strength"] for r in mine]
        ax.plot(xs, [r["share_fluent_target"] for r in mine], marker="o", color=color, label=f"{method}, {group}")
        ax.plot(xs, [r["share_target"] for r in mine], marker="x", linestyle="--", color=color, alpha=0.7,
                label=f"{method}, {group} (language only)")
    ax.axhline(base["share_fluent_target"], color="black", linestyle=":", linewidth=1, label="baseline")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"strength (x the method's level in {result['to']}; 0: {result['from']} neurons off only)")
    ax.set_ylabel(f"share fluent in {result['to']}")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7)
    if title:
        ax.set_title(title)
    _save(fig, path)


def write(result: dict, out, title: str = "") -> list:
    from lna.reports.tables import write_csv

    with staged_dir(out) as tmp:
        write_csv(tmp / "steer.csv", [key for key, _ in COLUMNS] + EXTRA,
                  [[row[key] for key, _ in COLUMNS] + [row[key] for key in EXTRA] for row in result["rows"]])
        (tmp / "steer.md").write_text(markdown(result), encoding="utf-8")
        figure(result, tmp / "steer.png", title)
        (tmp / "steer.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return sorted(p.name for p in tmp.iterdir())

"""lna-steer's table (JSON, CSV, Markdown) and figure (share of outputs in the target
language against strength, one line per layer group), written all or nothing."""
import json

from lna.core.atomic import staged_dir

COLUMNS = [("row", "setting"), ("share_target", "in target (langid)"), ("share_target_script", "target script"),
           ("share_source", "in source (langid)"), ("ppl_source", "PPL source refs"),
           ("ppl_target", "PPL target refs"), ("ppl_outputs", "PPL of outputs"), ("neurons_zeroed", "zeroed"),
           ("neurons_set", "set")]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.3g}"
    return str(value)


def markdown(result: dict) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[key]) for key, _ in COLUMNS) + " |" for row in result["rows"]]
    return "\n".join(lines) + "\n"


def figure(result: dict, path, title: str = "") -> None:
    """Share of outputs in the target language (solid: language identifier; dashed: script)
    against strength, one colour per layer group; 'off' (source zeroed only) at 0, the
    baseline as a dotted line."""
    from lna.reports.plots import SERIES, _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    rows = result["rows"]
    base = rows[0]
    groups = list(dict.fromkeys(r["layers"] for r in rows[1:]))
    for i, group in enumerate(groups):
        color = SERIES[i % len(SERIES)]
        mine = [r for r in rows[1:] if r["layers"] == group]
        xs = [0.0 if r["strength"] is None else r["strength"] for r in mine]
        ax.plot(xs, [r["share_target"] for r in mine], marker="o", color=color, label=f"layers {group}")
        ax.plot(xs, [r["share_target_script"] for r in mine], marker="x", linestyle="--", color=color, alpha=0.7,
                label=f"layers {group} (script)")
    ax.axhline(base["share_target"], color="black", linestyle=":", linewidth=1, label="baseline")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"strength (x mean activation in {result['to']}; 0: {result['from']} neurons off only)")
    ax.set_ylabel(f"share of outputs in {result['to']}")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    if title:
        ax.set_title(title)
    _save(fig, path)


def write(result: dict, out, title: str = "") -> list:
    from lna.reports.tables import write_csv

    with staged_dir(out) as tmp:
        write_csv(tmp / "steer.csv", [key for key, _ in COLUMNS] + ["layers", "strength", "outputs", "share_none"],
                  [[row[key] for key, _ in COLUMNS] + [row["layers"], row["strength"], row["outputs"],
                                                       row["share_none"]] for row in result["rows"]])
        (tmp / "steer.md").write_text(markdown(result), encoding="utf-8")
        figure(result, tmp / "steer.png", title)
        (tmp / "steer.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return sorted(p.name for p in tmp.iterdir())

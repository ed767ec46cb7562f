"""Figures in the paper's style (matplotlib, Agg backend: no display needed).

Figure 3: neurons of each type per layer, three lines. Figure 4: change per type per layer.
Figure 5: change in the neurons shared by N languages. Figure 10: bars per N, one series
per model.
"""
import numpy as np

LABELS = {"specific": "Language-specific", "related": "Language-related", "general": "General"}
COLORS = {"specific": "#d62728", "related": "#1f77b4", "general": "#2ca02c"}
SERIES = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    _pyplot().close(fig)


def _layer_lines(series: dict, path, ylabel: str, title: str, around_zero: bool) -> None:
    """One line per neuron type over the layers (Figures 3 and 4)."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for t, values in series.items():
        ax.plot(np.arange(len(values)), values, marker="o", markersize=3, linewidth=1.5,
                color=COLORS.get(t), label=LABELS.get(t, t))
    if around_zero:
        ax.axhline(0, color="black", linewidth=0.8)
    else:
        ax.set_xlim(-0.5, len(values) - 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.set_xlabel("Layer")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    _save(fig, path)


def layer_types(types: dict, path, title: str = "") -> None:
    """Figure 3: {type: counts per layer} as three lines."""
    _layer_lines(types, path, "Number of neurons", title, around_zero=False)


def layer_change(changes: dict, path, title: str = "") -> None:
    """Figure 4: {type: (after - before) per layer} as lines around zero."""
    _layer_lines(changes, path, "Change in number of neurons", title, around_zero=True)


def shared_by_n(series: dict, path, title: str = "") -> None:
    """Figure 10: {name: counts for N = 1..l} as grouped bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(series)
    K = len(next(iter(series.values())))
    width = 0.8 / len(names)
    x = np.arange(1, K + 1)
    for i, name in enumerate(names):
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, series[name], width, label=name,
                      color=SERIES[i % len(SERIES)])
        ax.bar_label(bars, fontsize=6 if len(names) > 1 else 7, padding=1)  # small N stay readable
    ax.set_xticks(x)
    ax.set_xlabel("Number of languages sharing the neuron (N)")
    ax.set_ylabel("Number of neurons")
    ax.grid(axis="y", alpha=0.3)
    if len(names) > 1:
        ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    _save(fig, path)


def shared_change(change, path, title: str = "") -> None:
    """Figure 5: change in the number of neurons shared by N languages, N = 1..l."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    change = np.asarray(change)
    x = np.arange(1, len(change) + 1)
    ax.bar(x, change, color=[SERIES[0] if v >= 0 else SERIES[3] for v in change])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xlabel("Number of languages sharing the neuron (N)")
    ax.set_ylabel("Change in number of neurons")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    _save(fig, path)


def heatmap(values, rows, cols, path, title: str = "", xlabel: str = "", ylabel: str = "",
            colorbar: str = "") -> None:
    """Figure 2: a matrix (rows = deactivated language, columns = target language) as an
    annotated heatmap; a diverging map centred on zero, so increases and decreases read apart."""
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * max(len(cols), 4), 1.2 + 0.48 * max(len(rows), 3)))
    limit = float(np.abs(values).max()) if values.size else 0.0
    limit = limit if limit > 0 else 1.0
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for (r, c), v in np.ndenumerate(values):
        text = f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        ax.text(c, r, text, ha="center", va="center", fontsize=7,
                color="white" if abs(v) > 0.6 * limit else "black")  # readable on the dark ends
    ax.set_xticks(np.arange(len(cols)), labels=cols, fontsize=8)
    ax.set_yticks(np.arange(len(rows)), labels=rows, fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    cbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    cbar.set_label(colorbar)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def accuracy_bars(series: dict, columns: list, path, title: str = "") -> None:
    """Tables 1 and 5 as a figure: {model: accuracy % per column (languages, then Avg.)} as
    grouped bars, one colour per model; NaN (language not evaluated) leaves a gap."""
    plt = _pyplot()
    names = list(series)
    fig, ax = plt.subplots(figsize=(max(6.0, (0.45 + 0.2 * len(names)) * len(columns)), 3.6))
    width = 0.8 / len(names)
    x = np.arange(len(columns))
    for i, name in enumerate(names):
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, series[name], width, label=name,
                      color=SERIES[i % len(SERIES)])
        if len(names) == 1:  # a 0 reads as 0, not as missing (several models: the table has the numbers)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, labels=columns)
    ax.set_ylim(0, 105)
    ax.set_xlabel("Language")
    ax.set_ylabel("Accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    if len(names) > 1:
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        ax.set_title(title)
    _save(fig, path)


def series_lines(series: dict, path, kind: str, title: str = "") -> None:
    """Figures 12-14: {checkpoint: change per layer} for one neuron type, one line a
    checkpoint, coloured from light (early) to dark (late)."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    cmap = plt.get_cmap({"specific": "Reds", "related": "Blues", "general": "Greens"}.get(kind, "Greys"))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(series)
    for i, name in enumerate(names):
        values = series[name]
        ax.plot(np.arange(len(values)), values, marker="o", markersize=2.5, linewidth=1.3,
                color=cmap(0.35 + 0.6 * (i + 1) / len(names)), label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Layer")
    ax.set_ylabel("Change in number of neurons")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7, ncol=max(1, len(names) // 6))
    if title:
        ax.set_title(title)
    _save(fig, path)


def series_totals(names, totals: dict, path, title: str = "") -> None:
    """Neurons of each type (all layers) along a series of checkpoints, one line a type."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(names))
    for t, values in totals.items():
        ax.plot(x, values, marker="o", markersize=3, linewidth=1.5, color=COLORS.get(t), label=LABELS.get(t, t))
    ax.set_xticks(x, labels=names, rotation=30 if len(names) > 6 else 0, fontsize=8)
    ax.set_xlabel("Checkpoint")
    ax.set_ylabel("Number of neurons")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    _save(fig, path)

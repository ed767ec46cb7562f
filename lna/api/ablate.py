"""`lna.ablate`: lna-ablate from Python, its perplexity matrix as a labelled array."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from lna.api.store import _codes, _options, _xarray
from lna.interventions.ablate import SETTINGS


def ablate(model: str, neurons, responses=None, *, out=None, dataset=None, langs="all", settings=SETTINGS,
           limit: int | None = None, progress: bool = True, **options) -> "xarray.DataArray":
    """Deactivate each language's neurons and measure the perplexity of every target
    language: the same run as lna-ablate (lna.interventions.ablate.run), into `out` (resumable,
    with its CSVs and heatmaps) or a temporary folder. `neurons`: lna-identify's JSON or a
    NeuronSets (for a mixture-of-experts model: the folder or expert_neurons.json of `lna
    experts`, settings also "experts"); `responses`: lna-profile's responses JSONL (default: beside the neurons'
    store). `options`: lna-ablate's (device, dtype, template, token_budget, ...).

    Returns an xarray.DataArray ppl[setting, deactivated, target] (row "baseline": nothing
    deactivated; NaN where a setting has no row for a language); the change against the
    baseline is `ppl - ppl.sel(deactivated="baseline")`. attrs: model, dtype, backend, tokens."""
    from lna.interventions.ablate import Options, run

    xr = _xarray()  # before the run: a missing extra is said before any work
    with tempfile.TemporaryDirectory(prefix="lna-ablate-") as tmp:
        if not isinstance(neurons, (str, Path)):  # a NeuronSets: lna-ablate reads a file
            from lna.identification.neurons import save

            neurons = save(neurons, Path(tmp) / "neurons.json")
        folder = Path(out) if out is not None else Path(tmp) / "out"
        opts = _options(Options, "lna.ablate", model=model, neurons=str(neurons), out=str(folder),
                        responses=None if responses is None else str(responses), dataset=dataset,
                        langs=_codes(langs), settings=tuple([settings] if isinstance(settings, str) else settings),
                        limit=limit, progress=progress, **options)
        result = json.loads((run(opts) / "ppl.json").read_text(encoding="utf-8"))
    return ppl_array(result, xr)


def ppl_array(result: dict, xr=None) -> "xarray.DataArray":
    """lna-ablate's ppl.json as DataArray ppl[setting, deactivated, target]."""
    xr = xr or _xarray()
    names = list(result["settings"])
    rows = list(dict.fromkeys(r for s in result["settings"].values() for r in s["rows"]))
    table = np.full((len(names), len(rows), len(result["languages"])), np.nan)
    for i, name in enumerate(names):
        s = result["settings"][name]
        table[i, [rows.index(r) for r in s["rows"]]] = s["ppl"]
    attrs = {k: result[k] for k in ("model", "dtype", "backend") if k in result}
    attrs["tokens"] = json.dumps(result.get("tokens", {}))  # plain text: attrs survive netCDF
    return xr.DataArray(table, dims=("setting", "deactivated", "target"),
                        coords={"setting": names, "deactivated": rows, "target": result["languages"]},
                        name="ppl", attrs=attrs)

"""docs/api.md runs as written: its python blocks, in order, in a fresh folder with a fresh
model cache; then what they made is checked against lna's own readers."""
import re
from pathlib import Path

import numpy as np
import pytest

PAGE = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")


def test_the_walk_through_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", PAGE, re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LNA_CACHE", str(tmp_path / "cache"))
    ns: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/api.md, python block {i + 1}", "exec"), ns)

    import lna
    from lna.identification import neurons
    from lna.storage.store import open_store

    # 1-2: the store profiled, and its labelled view, are what lna reads from the file
    on_disk = open_store("demo.zarr")
    assert np.array_equal(ns["store"].counts, on_disk.counts) and ns["store"].languages == on_disk.languages
    assert np.array_equal(ns["ds"].probability.values, on_disk.probabilities())
    k = on_disk.languages.index("th")
    assert np.allclose(ns["thai"].values, on_disk.probabilities()[:, k].mean(axis=1))
    # 3: the sets saved are the sets identified, and their views agree with the JSON
    saved = neurons.load("demo-neurons.json")
    assert saved.to_json() == ns["sets"].to_json()
    assert [a.tolist() for a in ns["th_only"]] == [a.tolist() for a in saved.split("specific")["th"]]
    # 4: the figure
    assert Path("probability-by-layer.png").stat().st_size > 1000
    # 5: the baseline row of the change is zero, the others finite
    change = ns["change"].sel(setting="specific")
    assert (change.sel(deactivated="baseline") == 0).all() and np.isfinite(change.values).all()
    # 6: the counter counted the fed-back tokens of each row, up to EOS (2)
    out, width = ns["out"], ns["batch"]["input_ids"].shape[1]
    fed = [row[width:-1] for row in out.tolist()]
    lengths = [row.index(2) if 2 in row else len(row) for row in fed]
    assert ns["counter"].tokens.tolist() == lengths and sum(lengths) > 0
    mine = lna.open("mine.zarr")
    assert np.array_equal(mine.counts, ns["counter"].counts) and mine.meta["counted_during"] == "sampling"


@pytest.mark.parametrize("name", ["profile", "open", "identify", "ablate", "count", "steer"])
def test_the_page_documents_every_function(name):
    assert f"lna.{name}(" in PAGE

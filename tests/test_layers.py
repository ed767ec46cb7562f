"""The layer rule (lna.core.layers, docs/design.md "Layout"): no module imports a higher floor,
no modules import each other in a circle, every module is on a floor; the checker itself
against hand-written graphs of small synthetic packages, and shown to catch a back-up
import put into a copy of the real source."""
import shutil
import textwrap
from pathlib import Path

import pytest

from lna.core import layers

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    return layers.import_graph(layers.repo_roots(REPO))


def test_no_import_runs_up(graph):
    found = layers.upward(graph)
    assert found == [], "imports from a lower floor to a higher one (lna/core/layers.py LAYERS): " + "; ".join(
        f"{a} line {line} imports {b}" for a, b, line in found)


def test_no_circles(graph):
    assert layers.circles(graph) == []


def test_every_module_and_package_is_on_a_floor(graph):
    # a new package must be placed in LAYERS: the catch-all floor of `lna` itself is for lna/__init__.py only
    assert {m for m in graph if layers.package_of(m) == "lna"} == {"lna"}
    assert len(graph) > 50 and "lna.kernels.reference" in graph and "lna.cli" in graph


def _tree(root: Path, files: dict) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_graph_of_a_synthetic_package_is_what_its_imports_say(tmp_path):
    """Every import form, module and function level, against the graph written by hand."""
    root = _tree(tmp_path / "lna", {
        "__init__.py": "from lna.core.errors import Oops\n",
        "core/__init__.py": "",
        "core/errors.py": '"""Docstrings do not import: from lna.cli import main"""\nclass Oops(Exception): pass\n',
        "core/util.py": "import os\nimport lna.core.errors as e\nfrom . import errors\n",
        "models/__init__.py": "from .loading import load\n",
        "models/loading.py": "def load():\n    from ..core import util\n    from lna.core.util import os\n",
        "cli/__init__.py": "def main():\n    if True:\n        from lna.models import load, loading\n",
    })
    got = layers.import_graph({"lna": root})
    assert got == {
        "lna": {"lna.core.errors": 1},
        "lna.core": {},
        "lna.core.errors": {},
        "lna.core.util": {"lna.core.errors": 2},
        "lna.models": {"lna.models.loading": 1},
        "lna.models.loading": {"lna.core.util": 2},
        "lna.cli": {"lna.models": 3, "lna.models.loading": 3},
    }
    assert layers.upward(got) == [] and layers.circles(got) == []
    assert layers.floors(got) == (5, ["lna.cli", "lna.models", "lna.models.loading", "lna.core.util", "lna.core.errors"])


def test_checker_reports_a_synthetic_back_up_import_and_circle(tmp_path):
    root = _tree(tmp_path / "lna", {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/errors.py": "def later():\n    from lna.runners import hf\n",  # up, inside a function
        "runners/__init__.py": "",
        "runners/hf.py": "from lna.core import errors\n",
    })
    got = layers.import_graph({"lna": root})
    assert layers.upward(got) == [("lna.core.errors", "lna.runners.hf", 2)]
    assert layers.circles(got) == [["lna.core.errors", "lna.runners.hf"]]
    assert layers.floors(got)[0] == 1  # the circle is one floor


def test_checker_catches_a_back_up_import_put_into_a_copy_of_the_source(tmp_path, graph):
    """The test above on the real tree: device parsing's old import of the runners from
    models/loading.py (the circle of issue 19) put back, inside a function."""
    copy = tmp_path / "lna"
    shutil.copytree(REPO / "lna", copy, symlinks=True)
    loading = copy / "models" / "loading.py"
    text = loading.read_text()
    loading.write_text(text + "\n\ndef _back_up():\n    from lna.runners import make_runner\n")
    got = layers.import_graph({"lna": copy, "lna.kernels": REPO / "kernels"})
    line = len(text.splitlines()) + 4
    assert layers.upward(got) == [("lna.models.loading", "lna.runners", line)]
    assert any({"lna.models.loading", "lna.runners"} <= set(c) for c in layers.circles(got))
    # and the same edge added to a copy of the graph
    edited = {a: dict(edges) for a, edges in graph.items()}
    edited["lna.core.errors"]["lna.cli"] = 1
    assert layers.upward(edited) == [("lna.core.errors", "lna.cli", 1)]


def test_a_module_on_no_floor_is_named():
    with pytest.raises(ValueError, match="elsewhere.mod: on no floor"):
        layers.floor_of("elsewhere.mod")


def test_the_committed_drawing_is_a_fresh_generation():
    import importlib.util

    spec = importlib.util.spec_from_file_location("import_graph", REPO / "docs" / "import_graph.py")
    drawing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drawing)
    committed = (REPO / "docs" / "import_graph.md").read_text(encoding="utf-8")
    assert committed == drawing.render(REPO), "docs/import_graph.md is stale: run python docs/import_graph.py"

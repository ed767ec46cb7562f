"""Every figure stated in README.md, docs/*.md and benches/README.md is what its results file
says, and every results file records where it came from (benches/render_figures.py,
benches/common.py)."""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHES = REPO / "benches"


def load(name):
    sys.path.insert(0, str(BENCHES))  # benches import `common` as a top-level module
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = load("render_figures")
common = load("common")


def copy_repo(tmp_path) -> Path:
    """The documents and results of this checkout, in a folder of their own."""
    root = tmp_path / "repo"
    (root / "benches").mkdir(parents=True)
    shutil.copy(REPO / "README.md", root / "README.md")
    shutil.copy(BENCHES / "README.md", root / "benches" / "README.md")
    shutil.copytree(BENCHES / "results", root / "benches" / "results")
    if (REPO / "docs").is_dir():
        shutil.copytree(REPO / "docs", root / "docs")
    return root


def blocks(root: Path) -> dict:
    """{figure name: [documents holding it]} over the documents of `root`."""
    out = {}
    for path in render.documents(root):
        for match in render.BLOCK.finditer(path.read_text(encoding="utf-8")):
            out.setdefault(match.group(2), []).append(path.relative_to(root))
    return out


def test_every_stated_figure_matches_its_results_file():
    assert render.check(REPO) == []
    # the figures are there to check: the performance table and the README's summary at least
    found = blocks(REPO)
    assert {"performance", "performance-summary"} <= set(found), found


def test_an_edited_results_value_fails_the_check(tmp_path):
    """Change one number in a results file: the figures stating it no longer match and the
    check names them; rendering again makes them match the new value."""
    root = copy_repo(tmp_path)
    assert render.check(root) == []
    path = root / "benches" / "results" / "identify_cpu.json"
    data = json.loads(path.read_text())
    data["seconds"]["lna"] = 0.4217
    path.write_text(json.dumps(data))
    problems = render.check(root)
    assert problems and all("differs from benches/results" in p for p in problems), problems
    assert any("figure performance " in p for p in problems) and any("figure performance-summary " in p
                                                                    for p in problems), problems
    assert render.render(root) == [] and render.check(root) == []
    assert "| 0.42 s (median" in (root / "docs" / "performance.md").read_text()
    assert "7B counts on CPU: 0.42 s" in (root / "README.md").read_text()


def test_an_edited_figure_in_a_document_fails_the_check(tmp_path):
    root = copy_repo(tmp_path)
    doc = root / "docs" / "performance.md"
    text = doc.read_text()
    match = re.search(r"(<!-- figures:performance -->\n.*?)(\d[\d,]*) counted tok/s", text, re.S)
    doc.write_text(text[:match.start(2)] + "9,999,999" + text[match.end(2):])
    assert any("docs/performance.md: figure performance differs" in p for p in render.check(root))


def test_a_figure_without_its_results_file_is_an_error(tmp_path):
    root = copy_repo(tmp_path)
    (root / "benches" / "results" / "identify_cpu.json").unlink()
    problems = render.check(root)
    assert any("no results file benches/results/identify_cpu.json" in p for p in problems), problems
    doc = root / "docs" / "performance.md"
    doc.write_text(doc.read_text() + "\n<!-- figures:no-such -->\nx\n<!-- /figures:no-such -->\n")
    assert any("unknown figure 'no-such'" in p for p in render.check(root))


def test_the_check_command_exits_non_zero_on_a_stale_figure(tmp_path):
    root = copy_repo(tmp_path)
    script = [sys.executable, str(BENCHES / "render_figures.py"), "--check", "--root", str(root)]
    assert subprocess.run(script, capture_output=True).returncode == 0
    path = root / "benches" / "results" / "identify_cpu.json"
    data = json.loads(path.read_text())
    data["seconds"]["lna"] += 1.0
    path.write_text(json.dumps(data))
    done = subprocess.run(script, capture_output=True, text=True)
    assert done.returncode == 1 and "figure performance differs" in done.stderr


# -- the results files ---------------------------------------------------------------------------
RESULTS = sorted((BENCHES / "results").glob("*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_every_results_file_follows_the_rule_and_says_where_it_came_from(path):
    data = json.loads(path.read_text())
    assert common.NAME_RULE.fullmatch(path.stem), f"{path.name}: not <bench>_<cpu|cuda|dryrun>.json"
    assert isinstance(data.get("machine"), dict) and isinstance(data.get("versions"), dict), path.name
    run = data["run"]
    assert {"commit", "date", "argv", "script", "load_average"} <= set(run), path.name
    if run["commit"] is None:  # older than the record: it says where it was committed instead
        assert run["date"] is None and "committed in" in run["note"], path.name
    else:
        assert re.fullmatch(r"[0-9a-f]{40}", run["commit"]) and run["date"] and run["argv"], path.name
    # the script named writes this very file (one bench, one file, one name)
    script = (REPO / run["script"]).read_text()
    bench = path.stem.rsplit("_", 1)[0]
    assert re.search(rf"""["']{bench}[_"']""", script), (path.name, run["script"])


def test_write_records_the_run_and_enforces_the_rule(tmp_path):
    payload = {"machine": {"device": "cpu"}, "versions": {"torch": "x"}, "figure": 1}
    path = common.write(common.results_name("example", "cuda:1"), payload, [tmp_path])
    assert path.name == "example_cuda.json"
    data = json.loads(path.read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI's fresh clone is one)
        assert data["run"]["commit"] == head.stdout.strip()
    assert data["run"]["script"] == "tests/test_figures.py" and data["run"]["date"][:2] == "20"
    assert data["run"]["argv"] and len(data["run"]["load_average"]) == 3 and data["figure"] == 1
    with pytest.raises(ValueError, match="breaks the rule"):
        common.write("example", payload, [tmp_path])
    with pytest.raises(ValueError, match="lacks"):
        common.write("example_cpu", {"versions": {}}, [tmp_path])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example_cuda.json"]

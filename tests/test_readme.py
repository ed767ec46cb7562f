"""The README's quick start and the docs' Python snippets work as written (on less data: the
commands' own --limit keeps the test short); the README's commands are the ones CI and the
timing bench run."""
import re
import shlex
from pathlib import Path

import pytest

from lna import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
FORMATS = (REPO / "docs" / "formats.md").read_text(encoding="utf-8")


def section(title: str, text: str = README) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def blocks(text: str, lang: str) -> list:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """Run the lna commands of the quick start in a fresh folder, with a fresh model cache."""
    root = tmp_path_factory.mktemp("quick")
    (command,) = blocks(section("Quick start"), "bash")
    steps = [shlex.split(step) for step in command.split("&&")]
    steps = [s for s in steps if s[0].startswith("lna-")]
    assert [s[0] for s in steps] == ["lna-profile", "lna-identify", "lna-report", "lna-ablate"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("LNA_CACHE", str(root / "cache"))
        for step in steps:
            argv = step[1:]
            if step[0] in ("lna-profile", "lna-ablate"):  # fewer problems, same commands
                argv = _without_limit(argv) + ["--limit", "2", "-q"]
            with pytest.raises(SystemExit) as done:
                getattr(cli, step[0][4:] + "_main")(argv)
            assert done.value.code == 0, step
    return root


def _without_limit(argv):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--limit":
            skip = True
        else:
            out.append(a)
    return out


def test_quick_start_writes_every_stage(quick_start):
    for name in ("demo.zarr", "demo.responses.jsonl", "demo-neurons.json", "demo-report/layers.png",
                 "demo-ablate/ppl.json"):
        assert (quick_start / name).exists(), name


def test_format_snippets_run(quick_start, monkeypatch):
    """The count-store snippets (zarr, then xarray) give the same probabilities as lna."""
    import numpy as np

    from lna.storage.store import open_store

    monkeypatch.chdir(quick_start)
    snippets = blocks(FORMATS, "python")
    assert len(snippets) == 2 and "import zarr" in snippets[0] and "import xarray" in snippets[1]
    expected = open_store("demo.zarr").probabilities()
    plain, labelled = {}, {}
    exec(snippets[0], plain)
    exec(snippets[1], labelled)
    assert np.array_equal(plain["p"], expected) and plain["languages"] == open_store("demo.zarr").languages
    assert np.array_equal(labelled["p"].values, expected)


def test_the_readme_commands_are_the_ones_ci_and_the_timing_bench_run():
    """.ci/run's test command is the README's, character for character; the quick start sets up
    the same way (without the dev extra); benches/bench_readme.py times exactly these two."""
    import importlib.util
    import sys

    (tests,) = blocks(section("Tests"), "bash")
    (quick,) = blocks(section("Quick start"), "bash")
    tests, quick = tests.strip(), quick.strip()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "the README's test command is not a line of .ci/run"
    setup = tests[:tests.index(" && pytest")]
    assert quick.startswith(setup.replace("pip install -e '.[dev]'", "pip install -e .") + " && lna-profile ")
    sys.path.insert(0, str(REPO / "benches"))
    spec = importlib.util.spec_from_file_location("_bench_readme", REPO / "benches" / "bench_readme.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.readme_command(README, "tests") == tests and bench.readme_command(README, "quick_start") == quick


def test_relative_links_resolve():
    """Every relative link of README.md, docs/*.md and benches/README.md names a file that exists
    (and, with #anchor, a heading of that page): the README sends readers to these pages."""
    def anchors(path):
        heads = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
        return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in heads}

    pages = [REPO / "README.md", REPO / "benches" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http(s), mailto
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken


def test_licence_and_citation_agree_with_the_package():
    """The licence the README names is LICENSE's and setup.py's; CITATION.cff cites this version."""
    from lna import __version__

    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert 'license="MIT"' in (REPO / "setup.py").read_text()
    assert "MIT ([LICENSE](LICENSE))" in README
    cff = (REPO / "CITATION.cff").read_text()
    assert f'version: "{__version__}"' in cff and "license: MIT" in cff
    assert f"version {__version__}" in section("How to cite")

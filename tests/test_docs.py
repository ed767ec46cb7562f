"""References to the project's docs point into the repository: every mention of design.md
or method.md in lna/, kernels/, tests/ and benches/ is docs/design.md or docs/method.md, and
every section it names in quotes is a heading there."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# docs/X.md, then the quoted section names right after it: (docs/method.md, "LAPE", "Lambda and tau")
REFERENCE = re.compile(r'docs/(design|method)\.md(?:\'s)?[,\s(]*(?P<names>(?:"[^"\n]+"[,\s]*)*)')
BARE = re.compile(r"(?<![\w/])(design|method|environment|HELPERS)\.md")


def sources():
    for folder in ("lna", "kernels", "tests", "benches"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix in (".py", ".sh", ".md") and path != Path(__file__).resolve() \
                    and not any(p.is_symlink() for p in path.parents):
                yield path


def headings(doc: str) -> set:
    return {line.lstrip("#").strip() for line in (REPO / "docs" / doc).read_text().splitlines()
            if line.startswith("## ")}


def named_sections(text: str):
    """(doc, section) for each quoted section name that follows a docs/X.md reference."""
    for ref in REFERENCE.finditer(text):
        for name in re.findall(r'"([^"\n]+)"', ref.group("names")):
            yield f"{ref.group(1)}.md", name


def test_every_docs_reference_names_an_existing_file_and_section():
    wrong = []
    for path in sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(REPO)
        wrong += [f"{rel}: {m.group(0)} is not in the repository (docs/{m.group(1)}.md?)" for m in BARE.finditer(text)]
        wrong += [f"{rel}: docs/{doc} has no section {name!r}" for doc, name in named_sections(text)
                  if name not in headings(doc)]
    assert wrong == []


def test_the_reference_checker_catches_a_bad_reference():
    text = 'see design.md, and (docs/method.md, "Masked perplexity", "No such part") and (docs/design.md, "Layout")'
    assert [m.group(0) for m in BARE.finditer(text)] == ["design.md"]
    assert list(named_sections(text)) == [("method.md", "Masked perplexity"), ("method.md", "No such part"),
                                          ("design.md", "Layout")]
    assert "No such part" not in headings("method.md") and "Masked perplexity" in headings("method.md")

"""lna.reports.tables: CSV files read back by the csv module, and the names of a table's rows
(--names of lna-compare and lna-eval --table), with their one-line refusals."""
import csv

import pytest

from lna.cli import run
from lna.cli.compare import compare
from lna.core.errors import LnaError
from lna.reports.tables import row_names, write_csv


def test_write_csv_reads_back(tmp_path):
    rows = [["en", 1, 0.5], ["zh, \"quoted\"", -2, "ü"]]
    write_csv(tmp_path / "t.csv", ["language", "n", "x"], rows)
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["language", "n", "x"], ["en", "1", "0.5"], ["zh, \"quoted\"", "-2", "ü"]]


def test_row_names():
    assert row_names(None, ["a", "b"], shown="") == ["a", "b"]
    assert row_names(["x", "y"], ["a", "b"], shown="x,y") == ["x", "y"]
    assert row_names(None, ["a", "a", "b"], shown="") == ["a (1)", "a (2)", "b (3)"]
    assert row_names(None, ["a", "a"], shown="", numbered="{name}{i}") == ["a1", "a2"]
    with pytest.raises(LnaError, match=r"^--names has 1 names for 2 inputs$"):
        row_names(["x"], ["a", "b"], shown="x")
    with pytest.raises(LnaError, match=r"^--names repeats a name: x, x$"):
        row_names(["x", "x"], ["a", "b"], shown="x, x")


def test_compare_refuses_repeated_names_in_one_line(tmp_path, capsys):
    code = run(compare, "lna-compare", ["a.json", "b.json", "--names", "x, x", "-o", str(tmp_path / "o")])
    assert code == 1 and capsys.readouterr().err == "lna-compare: error: --names repeats a name: x, x\n"
    assert not (tmp_path / "o").exists()

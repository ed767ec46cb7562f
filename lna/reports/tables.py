"""Tables as files, beside the figures (lna.reports.plots): the CSVs every command writes, and
the names of a table's rows."""
import csv

from lna.core.errors import LnaError


def write_csv(path, header, rows) -> None:
    """One header row, then `rows`; utf-8, the csv module's quoting."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def row_names(given, defaults: list, *, shown: str, numbered: str = "{name} ({i})") -> list:
    """The names of a table's rows, one per input: `given` (--names) where the user gave them,
    else `defaults`. A wrong number of --names, or a repeated one, is one line (`shown`: how it
    quotes --names); repeated defaults are told apart by their number (`numbered`)."""
    names = list(given) if given else list(defaults)
    if len(names) != len(defaults):
        raise LnaError(f"--names has {len(names)} names for {len(defaults)} inputs")
    if len(set(names)) != len(names):
        if given:
            raise LnaError(f"--names repeats a name: {shown}")
        names = [numbered.format(name=name, i=i) for i, name in enumerate(names, 1)]
    return names

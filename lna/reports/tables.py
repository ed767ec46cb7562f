"""Tables as files, beside the figures (lna.reports.plots): every command writes its CSVs here."""
import csv


def write_csv(path, header, rows) -> None:
    """One header row, then `rows`; utf-8, the csv module's quoting."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)

"""lna-report's tables and figures."""
import csv

import numpy as np
import pytest

from lna.identification.analysis import layer_types, shared_by_n, write_report
from lna.core.atomic import staged_dir
from lna.core.errors import LnaError
from lna.identification.identify import identify


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture
def ns():
    rng = np.random.default_rng(1)
    p = rng.beta(5.0, 30.0, (4, 3, 200))
    p[:, :, :3] = 0.99
    p[0, 0, 10], p[3, 1, 11] = 0.9, 0.9
    p[3, :2, 12] = 0.95
    return identify(p, ["en", "zh", "ja"], top_rate=0.01, source={"model": "tiny"})


def test_files_and_tables(ns, tmp_path):
    files = write_report(ns, tmp_path / "out")
    assert files == ["languages.csv", "layers.csv", "layers.png", "shared_by_n.csv", "shared_by_n.png"]
    rows = read_csv(tmp_path / "out" / "layers.csv")
    assert rows[0] == ["layer", "specific", "related", "general"]
    types = layer_types(ns)
    assert [[int(x) for x in r] for r in rows[1:]] == [
        [i, types["specific"][i], types["related"][i], types["general"][i]] for i in range(ns.layers)]
    shared = read_csv(tmp_path / "out" / "shared_by_n.csv")
    by_n = shared_by_n(ns)
    assert [r[:3] for r in shared[1:]] == [[str(n), t, str(by_n[:, n].sum())]
                                           for n, t in [(1, "specific"), (2, "related"), (3, "general")]]
    langs = read_csv(tmp_path / "out" / "languages.csv")
    assert langs[1] == ["en", str(ns.sizes()["en"]["all"]), str(ns.sizes()["en"]["specific"]),
                        str(ns.sizes()["en"]["related"])]


def test_figures_are_pngs(ns, tmp_path):
    import matplotlib.image as mpimg

    write_report(ns, tmp_path / "out")
    for name in ("layers.png", "shared_by_n.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(tmp_path / "out" / name)
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert img[..., :3].std() > 0.05  # something was drawn


def test_staged_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "a" / "out") as tmp:
            (tmp / "half.csv").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(LnaError, match="not a folder"):
        with staged_dir(tmp_path / "file"):
            pass

"""An output folder of lna-eval / lna-steer resumes only the run that made it (lna.core.runs.claim)."""
import json

import pytest

from lna.core.errors import LnaError
from lna.core.runs import RUN, claim

ID = {"model": "m", "dataset": "demo", "strengths": [1, 2]}


def test_first_claim_records_the_run_and_the_same_run_resumes(tmp_path):
    out = tmp_path / "new" / "dir"
    claim(out, ID, "answers", ["answers.jsonl"])
    assert json.loads((out / RUN).read_text()) == ID
    (out / "answers.jsonl").write_text("{}\n")
    claim(out, dict(ID), "answers", ["answers.jsonl"])  # resumes: no error, nothing rewritten
    assert json.loads((out / RUN).read_text()) == ID


@pytest.mark.parametrize("setup, expected", [
    (lambda out: (out / RUN).write_text(json.dumps({**ID, "model": "other"})), "holds answers of another run (model differ)"),
    (lambda out: (out / RUN).write_text('{"model": "m", "datas'), f"{RUN}: unreadable"),
    (lambda out: (out / RUN).write_text("[1, 2]"), f"{RUN}: unreadable"),
    (lambda out: (out / "answers.jsonl").write_text("{}\n"), "answers.jsonl: answers of an unknown run"),
])
def test_another_runs_folder_is_refused_untouched(tmp_path, setup, expected):
    out = tmp_path / "out"
    out.mkdir()
    setup(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(LnaError, match="choose another -o") as err:
        claim(out, ID, "answers", ["answers.jsonl"])
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

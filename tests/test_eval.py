"""lna-eval on responses of known correctness: accuracy, tables, the study's format, errors."""
import csv
import json
from fractions import Fraction

import pytest

from conftest import eval_cli, write_jsonl
from lna.cli import run
from lna.cli.profile import profile

# (language, reference answer, responses, lna verdicts); worked out by hand. The released
# evaluation (mapo) scores the first response only: see MAPO_FIRST.
QUESTIONS = [
    ("en", 1250, ["The answer is 1,250.", "So 1250"], [1, 1]),
    ("en", 7, ["The answer is 7.", "The answer is 8."], [1, 0]),
    ("en", 4, ["No idea.", "The answer is -4."], [0, 0]),
    ("de", 1500, ["Die Antwort ist 1.600.", "Die Antwort ist 1.500."], [0, 1]),
    ("de", 22.5, ["Also 9 × 2,50 = 22,50 €. Die Antwort ist 22,50.", "Die Antwort ist 20."], [1, 0]),
    ("zh", 5, ["答案是 5。", "5"], [1, 1]),
    ("zh", 6, ["答案是 7。", "六"], [0, 0]),
    ("zh", 12, ["所以答案是１２。", "答案是 13"], [1, 0]),
    ("zh", 3, ["答案是-3。", "没有"], [0, 0]),
]
# first responses under the released rules: en 1250 R, 7 R, "No idea." (0.0) W; de 1.6 W,
# 2250 W; zh 5 R, 7 W, 12 R, 3 (sign dropped) R
MAPO_FIRST = [1, 1, 0, 0, 0, 1, 0, 1, 1]
NAMES = {"en": "English", "de": "German", "zh": "Chinese"}

# hand-computed: accuracy = mean over questions of the fraction right
ACCURACY = {"zh": Fraction(1 + 0 + Fraction(1, 2) + 0, 4), "de": Fraction(1, 2), "en": Fraction(1, 2)}
AT_LEAST_ONE = {"zh": Fraction(2, 4), "de": Fraction(2, 2), "en": Fraction(2, 3)}
MAPO = {"zh": Fraction(3, 4), "de": Fraction(0), "en": Fraction(2, 3)}
CSV = ("model,zh,de,en,Avg.\n"
       "known,37.5,50.0,50.0,45.8\n"          # Avg. (3/8 + 1/2 + 1/2) / 3 = 11/24
       "known (at least one of 2),50.0,100.0,66.7,72.2\n")  # (1/2 + 1 + 2/3) / 3 = 13/18
MAPO_CSV = "model,zh,de,en,Avg.\nknown,75.0,0.0,66.7,47.2\n"  # (3/4 + 0 + 2/3) / 3 = 17/36


@pytest.fixture(scope="module")
def profiled(tiny_models, tmp_path_factory):
    """lna-profile's own responses file for the questions above (the responses are counted)."""
    root = tmp_path_factory.mktemp("profiled")
    dataset = str(write_jsonl(root / "known.jsonl", [{"id": i, "lang": lang, "query": f"Question {i}?",
                                                      "answer": str(gold), "responses": resp}
                                                     for i, (lang, gold, resp, _) in enumerate(QUESTIONS)]))
    store = root / "known.zarr"
    assert run(profile, "lna-profile", ["-q", "--model", tiny_models["llama"], "--dataset", dataset, "--out", str(store)]) == 0
    return root / "known.responses.jsonl"


@pytest.fixture(scope="module")
def study_format(profiled, tmp_path_factory):
    """The same responses in the study's JSONL format (prompt verbatim, language by name)."""
    recs = [json.loads(line) for line in profiled.read_text(encoding="utf-8").splitlines()]
    path = tmp_path_factory.mktemp("study") / "known.jsonl"
    return str(write_jsonl(path, [{"lang": NAMES[r["lang"]], "instruction": r["prompt"],
                                   "answers": [{"generated": g} for g in r["responses"]],
                                   "answer": json.loads(r["answer"])} for r in recs]))


def read(folder):
    return json.loads((folder / "accuracy.json").read_text(encoding="utf-8"))


def test_accuracy_equals_hand_computed(profiled, tmp_path):
    assert eval_cli("--responses", str(profiled), "--name", "known", "-o", str(tmp_path / "a")) == 0
    result = read(tmp_path / "a")
    assert result["languages"] == ["zh", "de", "en"]  # the paper's column order
    assert result["accuracy"] == {k: float(v) for k, v in ACCURACY.items()}
    assert result["average"] == float(sum(ACCURACY.values()) / 3) == float(Fraction(11, 24))
    assert result["at_least_one"] == {k: float(v) for k, v in AT_LEAST_ONE.items()}
    assert result["average_at_least_one"] == float(Fraction(13, 18))
    assert result["average_non_english"] == float((ACCURACY["zh"] + ACCURACY["de"]) / 2)
    assert result["samples"] == {"zh": 8, "de": 4, "en": 6} and result["samples_per_question"] == 2
    assert result["questions"] == {"zh": 4, "de": 2, "en": 3} and result["correct"] == {"zh": 3, "de": 2, "en": 3}
    assert (tmp_path / "a" / "accuracy.csv").read_text(encoding="utf-8").replace("\r\n", "\n") == CSV
    md = (tmp_path / "a" / "accuracy.md").read_text(encoding="utf-8").splitlines()
    assert md[0] == "| model | zh | de | en | Avg. |" and md[2] == "| known | 37.5 | 50.0 | 50.0 | 45.8 |"
    assert (tmp_path / "a" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one verdict a response, in order, as worked out by hand
    verdicts = [json.loads(line) for line in (tmp_path / "a" / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [v["correct"] for v in verdicts] == [bool(x) for *_, vs in QUESTIONS for x in vs]
    assert [v["response"] for v in verdicts] == [r for _, _, rs, _ in QUESTIONS for r in rs]
    assert verdicts[7]["extracted"] == 1500 and verdicts[16]["extracted"] == -3


def test_study_format_gives_the_same(profiled, study_format, tmp_path):
    assert eval_cli("--responses", str(profiled), "-o", str(tmp_path / "lna")) == 0
    assert eval_cli("--responses", study_format, "-o", str(tmp_path / "study")) == 0
    a, b = read(tmp_path / "lna"), read(tmp_path / "study")
    for key in ("languages", "accuracy", "average", "at_least_one", "samples", "questions", "correct"):
        assert a[key] == b[key], key
    for name in ("lna", "study"):  # the released rules: first response only
        assert eval_cli("--responses", str(profiled) if name == "lna" else study_format, "--extraction", "mapo",
                        "--name", "known", "-o", str(tmp_path / f"mapo-{name}")) == 0
        result = read(tmp_path / f"mapo-{name}")
        assert result["accuracy"] == {k: float(v) for k, v in MAPO.items()}
        assert result["samples"] == {"zh": 4, "de": 2, "en": 3} and result["scored"] == "first response"
        assert (tmp_path / f"mapo-{name}" / "accuracy.csv").read_text(encoding="utf-8").replace("\r\n", "\n") == MAPO_CSV
        verdicts = (tmp_path / f"mapo-{name}" / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(v)["correct"] for v in verdicts] == [bool(x) for x in MAPO_FIRST]


def test_langs_and_limit_select_questions(profiled, tmp_path):
    assert eval_cli("--responses", str(profiled), "--langs", "zh,en", "--limit", "2", "-o", str(tmp_path / "a")) == 0
    result = read(tmp_path / "a")
    assert result["languages"] == ["zh", "en"]
    assert result["accuracy"] == {"zh": 0.5, "en": 0.75}  # zh (1 + 0) / 2; en (1 + 1/2) / 2


def test_reference_answers_from_the_dataset(tiny_models, tmp_path):
    """A responses file without answers (profiled from prompts alone) scored with --dataset's."""
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    recs = [{"id": i, "lang": lang, "query": f"Q{i}", "responses": resp} for i, (lang, _, resp, _) in enumerate(QUESTIONS)]
    data = str(write_jsonl(tmp_path / "p" / "d.jsonl", recs))
    golds = str(write_jsonl(tmp_path / "g" / "d.jsonl", [dict(r, answer=q[1]) for r, q in zip(recs, QUESTIONS)]))
    assert run(profile, "lna-profile", ["-q", "--model", tiny_models["llama"], "--dataset", data,
                                        "--out", str(tmp_path / "p" / "d.zarr")]) == 0
    responses = str(tmp_path / "p" / "d.responses.jsonl")
    assert eval_cli("--responses", responses, "-o", str(tmp_path / "none")) == 1  # no answers: refused
    assert not (tmp_path / "none").exists()
    assert eval_cli("--responses", responses, "--dataset", golds, "-o", str(tmp_path / "a")) == 0
    assert read(tmp_path / "a")["accuracy"] == {k: float(v) for k, v in ACCURACY.items()}


def test_table_combines_models_in_the_papers_layout(profiled, tmp_path):
    assert eval_cli("--responses", str(profiled), "--name", "known", "-o", str(tmp_path / "a")) == 0
    assert eval_cli("--responses", str(profiled), "--extraction", "mapo", "--name", "released",
                    "-o", str(tmp_path / "b")) == 0
    assert eval_cli("--table", str(tmp_path / "a"), str(tmp_path / "b" / "accuracy.json"), "-o", str(tmp_path / "t")) == 0
    rows = list(csv.reader((tmp_path / "t" / "accuracy.csv").open(encoding="utf-8")))
    assert rows == [line.split(",") for line in CSV.splitlines()] + [["released", "75.0", "0.0", "66.7", "47.2"]]
    assert (tmp_path / "t" / "accuracy.png").is_file() and (tmp_path / "t" / "accuracy.md").is_file()
    # results of other languages: the union of columns in the paper's order, gaps left empty
    other = read(tmp_path / "a")
    other.update(name="other", languages=["bn", "en"], accuracy={"bn": 0.25, "en": 1.0}, average=0.625,
                 samples_per_question=1)
    (tmp_path / "o.json").write_text(json.dumps(other), encoding="utf-8")
    assert eval_cli("--table", str(tmp_path / "b"), str(tmp_path / "o.json"), "--names", "x,y", "-o", str(tmp_path / "u")) == 0
    rows = list(csv.reader((tmp_path / "u" / "accuracy.csv").open(encoding="utf-8")))
    assert rows == [["model", "bn", "zh", "de", "en", "Avg."], ["x", "", "75.0", "0.0", "66.7", "47.2"],
                    ["y", "25.0", "", "", "100.0", "62.5"]]


@pytest.mark.parametrize("args,expect", [
    (["--responses", "missing.jsonl"], "no such file"),
    ([], "give --model M to sample responses, or --responses FILE"),
    (["--table", "--model", "m", "x"], "takes no --model"),
    (["--table", "nowhere"], "no accuracy.json there"),
    (["--table", "bad.json"], "not valid JSON"),
    (["--table", "other.json"], "not an lna-eval accuracy.json"),
    (["stray"], "files to combine go with --table"),
    (["--responses", "broken.jsonl"], "not valid JSON"),
    (["--responses", "empty.jsonl"], "have no response"),
    (["--responses", "noanswer.jsonl"], "has no reference answer"),
    (["--responses", "words.jsonl"], "is not a number"),
    (["--model", "lna:tiny-llama", "--samples", "3"], "greedy decoding gives one response"),
    (["--model", "lna:tiny-llama", "--dataset", "noanswer.jsonl"], "has no reference answer"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, expect):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    (tmp_path / "other.json").write_text('{"languages": ["en"]}', encoding="utf-8")
    (tmp_path / "broken.jsonl").write_text('{"lang": "en", "query": "q", "responses": ["1"]}\n{oops\n', encoding="utf-8")
    write_jsonl(tmp_path / "empty.jsonl", [{"lang": "en", "query": "q", "answer": 1}])
    write_jsonl(tmp_path / "noanswer.jsonl", [{"lang": "en", "query": "q", "responses": ["1"]}])
    write_jsonl(tmp_path / "words.jsonl", [{"lang": "en", "query": "q", "answer": "five", "responses": ["5"]}])
    assert eval_cli(*args, "-o", "out") != 0
    err = capsys.readouterr().err
    assert err.startswith("lna-eval: error:") and expect in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_output_folder_must_be_a_folder(profiled, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert eval_cli("--responses", str(profiled), "-o", str(tmp_path / "file")) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert eval_cli("--responses", str(profiled)) == 2  # -o is required
    assert "'-o' / '--out'" in capsys.readouterr().err


def test_a_failed_write_leaves_the_previous_outputs(profiled, tmp_path, monkeypatch, capsys):
    out = tmp_path / "a"
    assert eval_cli("--responses", str(profiled), "-o", str(out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lna.reports.plots.accuracy_bars", full_disk)
    assert eval_cli("--responses", str(profiled), "--extraction", "mapo", "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("lna-eval: error:") and "No space left on device" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # all or nothing: nothing
    assert eval_cli("--table", str(out), "-o", str(tmp_path / "t")) == 1
    assert not (tmp_path / "t").exists()

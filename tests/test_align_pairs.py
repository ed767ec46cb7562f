"""lna-align's pairs stage on a hand-made scores file, against pairs derived by hand from
the rules of NJUNLP/MAPO Preprocess/extract_dpo_data.py."""
import pytest

from lna.core import jsonl
from lna.align import pairs
from lna.align.texts import has_repeated_line, references, source_text
from lna.core.errors import LnaError


def resp(text, clean, released=None):
    return {"text": text, "score_clean": clean, "score_released": clean if released is None else released}


# gold 5.  Sorted by clean score: r1 4.0, r0 3.0, r4 3.0 (tie: file order), r2 2.0, r3 1.0, r5 unscored.
Q0 = {"key": "d/zh/0", "lang": "zh", "qid": "0", "prompt": "P0", "answer": "5", "responses": [
    resp("2 + 3 = 5", 3.0, 1.0),            # r0 correct
    resp("2 + 3 = 6", 4.0, 2.0),            # r1 wrong, best
    resp("so <<2+3=5>>it is 5", 2.0, 3.0),  # r2 correct
    resp("2 + 3 = <<2+3=5>>5", 1.0, 4.0),   # r3 correct; equals r0 without its annotation
    resp("it is 5.0?", 3.0, 0.5),           # r4 correct (5.0 == 5), ties r0
    resp("5", None, None),                  # r5 no references: no score, no pairs
]}
# clean ranking: r0 (correct) > r2: pair; r0 = r4: equal scores, none; r0 vs r3: same text, none;
# r4 (correct) > r2, r4 > r3: pairs; r2 (correct) > r3: pair.
CLEAN = [(0, 2), (4, 2), (4, 3), (2, 3)]
# released ranking: r3 4.0, r2 3.0, r1 2.0, r0 1.0, r4 0.5; every one but r1 is correct.
# r3 > r2, r1, r4 (not r0: same text); r2 > r1, r0, r4; r0 > r4.
RELEASED = [(3, 2), (3, 1), (3, 4), (2, 1), (2, 0), (2, 4), (0, 4)]


def test_pairs_of_one_question_by_hand():
    got = [(p["chosen_index"], p["rejected_index"]) for p in pairs.question_pairs(Q0, "clean")]
    assert got == CLEAN
    got = [(p["chosen_index"], p["rejected_index"]) for p in pairs.question_pairs(Q0, "released")]
    assert got == RELEASED
    p = pairs.question_pairs(Q0)[0]
    assert (p["prompt"], p["chosen"], p["rejected"], p["score_chosen"], p["score_rejected"]) == \
        ("P0", "2 + 3 = 5", "so <<2+3=5>>it is 5", 3.0, 2.0)


def q(qid, lang, n_pairs_wanted):
    """A question with exactly `n_pairs_wanted` pairs: one correct best response over that many
    distinct, lower-scored wrong ones."""
    rs = [resp("= 7", 9.0)] + [resp(f"wrong {i}: 8", 5.0 - i) for i in range(n_pairs_wanted)]
    return {"key": f"d/{lang}/{qid}", "lang": lang, "qid": str(qid), "prompt": f"P{qid}", "answer": "7",
            "responses": rs}


def test_dev_split_every_tenth_question_group_and_cap(tmp_path):
    recs = [q(i, "zh", 2) for i in range(12)] + [q(i, "de", 1) for i in range(12)]
    got = pairs.extract(recs, max_pairs=None)
    dev_groups = sorted({p["qid"] for p in got if p["split"] == "dev"})
    assert dev_groups == ["0", "10"]  # positions 0 and 10 of the 12 groups, both languages
    assert sum(p["split"] == "dev" for p in got) == 2 * 2 + 2 * 1
    train = [p for p in got if p["split"] == "train"]
    assert (sum(p["lang"] == "zh" for p in train), sum(p["lang"] == "de" for p in train)) == (20, 10)

    capped = pairs.extract(recs, max_pairs=7, seed=3)
    by_lang = {x: [p for p in capped if p["split"] == "train" and p["lang"] == x] for x in ("zh", "de")}
    assert (len(by_lang["zh"]), len(by_lang["de"])) == (7, 7)
    full = [p for p in got if p["split"] == "train"]
    assert all(p in full for p in by_lang["zh"] + by_lang["de"])
    assert [p for p in capped if p["split"] == "dev"] == [p for p in got if p["split"] == "dev"]
    assert capped == pairs.extract(recs, max_pairs=7, seed=3)  # seeded
    assert pairs.extract(recs, max_pairs=None, dev_every=0) == [{**p, "split": "train"} for p in got]

    jsonl.write(tmp_path / "pairs.jsonl", capped)
    assert jsonl.read(tmp_path / "pairs.jsonl", "pairs", "") == capped


def test_answers_read_as_lna_eval_reads_them():
    rec = {**Q0, "lang": "de", "answer": "1500", "responses": [
        resp("Also 1.500 Äpfel.", 2.0), resp("Es sind -1500 Äpfel.", 1.5), resp("Vielleicht 7.", 1.0)]}
    got = [(p["chosen_index"], p["rejected_index"]) for p in pairs.question_pairs(rec)]
    assert got == [(0, 1), (0, 2)]  # German reads "1.500" as 1500; -1500 is wrong
    got = [(p["chosen_index"], p["rejected_index"]) for p in pairs.question_pairs(rec, extraction="mapo")]
    assert got == [(1, 2)]  # the released rule reads 1.5 and drops the sign


def test_missing_answer_is_an_error():
    with pytest.raises(LnaError, match="no gold answer"):
        pairs.question_pairs({**Q0, "answer": ""})
    with pytest.raises(LnaError, match="unknown score"):
        pairs.question_pairs(Q0, "max")


def test_released_text_rules():
    assert source_text("  a <<1+1=2>>2 #### 2 ") == "a 2"
    assert source_text(" x <<y>> ") == "x "  # strip first, annotations after: a space stays, as released
    assert has_repeated_line("a\nb\n\na") and has_repeated_line("a\n\n\n\nb") is False
    assert references(["A <<1=1>>1 #### 1", "A 1", " B\nB", "C\n"]) == ["A 1", "C"]

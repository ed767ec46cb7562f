"""lna-steer's judgements of one output (issue 23): hand-written outputs of the kinds steering
produced on a real model - salad, loops, fluent target, fluent source, mixed - each judged
as a reader would, in a table of expected judgements; the measures against hand counts."""
import pytest

from lna.interventions.steer import judge

MAX_PPL = 100.0  # the run's threshold, here fixed by hand
SALAD = ("ocation artificilly artificocation artificocation ocation artificilly artific ocation artificocation "
         "artificilly ocation artific artificocation ocation artificilly artific")
LOOP = "La femme, je suis une femme, je suis une femme, je suis une femme, je suis une femme, je suis une"
FR = "Jean a trois pommes. Il en achète quatre de plus au marché, donc il en a sept au total."
FR_MATH = ("Janet a 16 œufs. Elle en mange 3 et en utilise 4 pour un gâteau. 16 - 3 - 4 = 9 œufs. "
           "Elle vend 9 œufs à 2 $, donc elle gagne 18 $ par jour.")
EN = "John has three apples. He buys four more at the market, so he has seven in total."
MIXED = "John has three apples and two pears. Il en achète quatre de plus au marché, donc il en a sept."
ZH = "男孩原来有3个苹果，又买了4个，所以一共有7个。"

# text, its perplexity under the unsteered model, target; expected: language, degenerate, PPL ok, fluent in target
CASES = {
    "salad (pseudo-words)": (SALAD, 850.0, "fr", "none", True, False, False),
    "salad of one target word": ("pourriteur pourriteur pourriteur pourriteur pourriteur pourriteur", 3.1, "fr",
                                 "fr", True, True, False),
    "loop in the target": (LOOP, 2.4, "fr", "fr", True, True, False),
    "fluent target": (FR, 21.0, "fr", "fr", False, True, True),
    "fluent target, a worked answer": (FR_MATH, 35.0, "fr", "fr", False, True, True),
    "fluent target the model finds unlikely": (FR, 400.0, "fr", "fr", False, False, False),
    "fluent source": (EN, 12.0, "fr", "en", False, True, False),
    "mixed source and target": (MIXED, 30.0, "fr", "mixed", False, True, False),
    "no letters": ("12 + 3 = 15", 5.0, "fr", "none", False, True, False),
    "empty": ("", None, "fr", "none", False, False, False),
    "fluent target in Chinese": (ZH, 40.0, "zh", "zh", False, True, True),
    "loop in Chinese": ("苹果" * 12, 1.5, "zh", "zh", True, True, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hand_written_outputs_are_judged_as_a_reader_would(name):
    text, ppl, target, language, degenerate, ppl_ok, fluent = CASES[name]
    got = judge.judge(text, ppl, target, MAX_PPL)
    assert (got["language"]["language"], got["degeneracy"]["degenerate"], got["ppl_ok"], got["fluent_target"]) == \
        (language, degenerate, ppl_ok, fluent)


def test_language_keeps_label_and_probability():
    salad = judge.language(SALAD)
    assert salad["label"] == "en" and salad["prob"] < 0.5 and salad["language"] == "none"  # identifier unsure
    mixed = judge.language(MIXED)
    assert mixed["label"] == "fr" and mixed["prob"] > 0.9 and mixed["agree"] < 0.8  # confident, yet mixed
    zh = judge.language(ZH)  # zh + wuu + yue summed: py3langid alone gives wuu 0.65
    assert zh["label"] == "zh" and zh["prob"] > 0.99
    strict = judge.language(FR, judge.Thresholds(min_prob=0.999))
    assert strict["language"] == "none" and strict["label"] == "fr"


def test_degeneracy_measures_against_hand_counts():
    assert judge.units("Il a dit: «L'homme, 3 fois!» 男孩") == ["il", "a", "dit", "l'homme", "3", "fois", "男", "孩"]
    # a b c a b c a b: 4-grams abca bcab cabc abca bcab -> 3 distinct of 5
    words = list("abcabcab")
    assert judge.rep_n(words, 4) == pytest.approx(1 - 3 / 5)
    assert judge.distinct_n(words, 1) == pytest.approx(3 / 8)
    assert judge.distinct_n(words, 2) == pytest.approx(3 / 7)  # ab bc ca
    assert judge.rep_n(["x", "y"], 4) == 0.0 and judge.distinct_n([], 1) == 1.0
    loop = judge.degeneracy(LOOP)
    assert loop["words"] == 21 and loop["rep4"] > 0.6 and loop["degenerate"]
    assert not judge.degeneracy("a a a")["degenerate"]  # under 4 words: too short to tell
    assert judge.degeneracy("a a a a")["degenerate"]  # distinct-1 0.25


def test_perplexity_threshold_is_inclusive_and_refuses_nan():
    assert judge.judge(FR, MAX_PPL, "fr", MAX_PPL)["fluent_target"]
    assert not judge.judge(FR, float("nan"), "fr", MAX_PPL)["ppl_ok"]
    assert not judge.judge(FR, float("inf"), "fr", float("inf"))["ppl_ok"]

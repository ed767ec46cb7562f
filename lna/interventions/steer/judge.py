"""Three judgements of one steered output, and the verdict "fluent in the target language".

A reader asked whether steering worked looks at three things, and so does lna-steer:

1. Language (lna.interventions.langid: py3langid's normalized probabilities, summed over its
   labels of one lna language, e.g. zh + wuu + yue). The text's language is the identifier's
   top language if its probability is at least `min_prob` (0.5: below it the other labels
   together outweigh it; token salad lands there), else "none" (also for a text without
   letters). A text that switches language part way is "mixed": its sentences are identified
   one by one and fewer than `min_agree` (0.8) of its letters lie in sentences of the top
   language (sentences of under `MIN_SENTENCE` letters are not identified alone).
2. Degeneracy, over words (CJK: characters, as those scripts write no spaces), lowercased:
   - rep-4, the share of the output's word 4-grams that repeat an earlier one (seq-rep-4 of
     Welleck et al. 2020): loops ("je suis une femme, je suis une femme, ...") score
     near 1, fluent text near 0; degenerate above `max_rep` (0.3);
   - distinct-1, distinct words / words (Li et al. 2016): a text made of a few words in
     varying order (salad that rep-4 misses) scores low; degenerate below `min_distinct`
     (0.4). Fluent prose of 20-60 words scores 0.5-0.9.
   Texts under `MIN_UNITS` (4) words are not judged degenerate (too short to tell).
3. Perplexity of the output under the unsteered model, given its prompt: salad is
   unlikely text to the model itself. Passes at most `max_ppl` (a run's threshold: by
   default `ppl_factor` x the unsteered model's perplexity of the target-language reference
   responses, lna.interventions.steer.run). Loops pass this one (repetition is likely text),
   which is why degeneracy is judged on its own.

An output is fluent in the target when all three pass: language == target, not degenerate,
perplexity within the threshold.
"""
from dataclasses import asdict, dataclass

import numpy as np

from lna.interventions import langid

MIN_SENTENCE = 12  # letters: shorter sentences are too short for the identifier alone
MIN_UNITS = 4  # words: shorter outputs are not judged degenerate
MIXED = "mixed"


@dataclass(frozen=True)
class Thresholds:
    min_prob: float = 0.5
    min_agree: float = 0.8
    max_rep: float = 0.3
    min_distinct: float = 0.4
    ppl_factor: float = 4.0


# -- language -------------------------------------------------------------------------------------
def sentences(text: str) -> list:
    import regex

    return [s for s in regex.split(r"(?<=[.!?。！？;；])\s*|\n+", text) if s and s.strip()]


def language(text: str, th: Thresholds = Thresholds()) -> dict:
    """{"label": top language, "prob": its probability, "agree": share of letters in sentences
    identified as it, "language": label, "none" or "mixed"}."""
    label, prob = langid.identify(text)
    if label == langid.NONE:
        return {"label": label, "prob": 0.0, "agree": 0.0, "language": langid.NONE}
    inside = total = 0
    for sentence in sentences(text):
        n = len(langid._letters(sentence))
        if n >= MIN_SENTENCE:
            total += n
            inside += n * (langid.identify(sentence)[0] == label)
    agree = inside / total if total else 1.0
    judged = langid.NONE if prob < th.min_prob else MIXED if agree < th.min_agree else label
    return {"label": label, "prob": prob, "agree": agree, "language": judged}


# -- degeneracy -----------------------------------------------------------------------------------
def units(text: str) -> list:
    """Words, lowercased; each CJK character a word of its own (no spaces to split on)."""
    import regex

    return regex.findall(r"[\p{Han}\p{Hiragana}\p{Katakana}]|[\p{L}\p{M}\p{N}]+(?:['’][\p{L}]+)*",
                         text.lower())


def rep_n(words: list, n: int = 4) -> float:
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(words: list, n: int = 1) -> float:
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def degeneracy(text: str, th: Thresholds = Thresholds()) -> dict:
    words = units(text)
    rep, distinct = rep_n(words, 4), distinct_n(words, 1)
    bad = len(words) >= MIN_UNITS and (rep > th.max_rep or distinct < th.min_distinct)
    return {"words": len(words), "rep4": rep, "distinct1": distinct, "degenerate": bool(bad)}


# -- the verdict ------------------------------------------------------------------------------------
def judge(text: str, ppl: float | None, target: str, max_ppl: float, th: Thresholds = Thresholds()) -> dict:
    """The three judgements of one output and whether it is fluent in `target`. `ppl`: its
    perplexity under the unsteered model (None: an empty output)."""
    lang, deg = language(text, th), degeneracy(text, th)
    plausible = ppl is not None and bool(np.isfinite(ppl)) and ppl <= max_ppl
    return {"language": lang, "degeneracy": deg, "ppl": ppl, "ppl_ok": plausible,
            "fluent_target": lang["language"] == target and not deg["degenerate"] and plausible}


def thresholds_record(th: Thresholds, max_ppl: float, basis: str) -> dict:
    return {**asdict(th), "max_ppl": max_ppl, "max_ppl_basis": basis, "min_sentence_letters": MIN_SENTENCE,
            "min_words": MIN_UNITS}

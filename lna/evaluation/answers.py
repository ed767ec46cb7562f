"""Answer extraction for math word problems (MGSM, MSVAMP): the last number of a response,
compared numerically with the reference answer, as MathOctopus/MAPO evaluate.

Two methods (docs/eval.md):

``lna`` (the default) reads every number the way a reader of the response's language would:
  - digits of any script (Unicode decimal digits: ASCII, Bengali, Thai, full-width, ...);
  - a minus sign (-, U+2212, full-width) counts where it cannot be an operator or a hyphen:
    not right after a digit, a closing bracket or a letter of a script that spaces its words
    ("= -5", "(-5)" and "答案是-5" are negative, "10-5" and "COVID-19" are not);
  - thousands groups of three digits after ',' '.' apostrophes, no-break, narrow no-break,
    thin or plain spaces, the same separator throughout one number ("1,234,567",
    "1.234.567", "1'234", "1 000 000"), and the Indian grouping ("1,00,000", "12,34,567");
  - one decimal mark, '.' or ',' (or the full-width or Arabic one), after the groups
    ("1.234,5", "1,234.5", "2,5", "3.75"), or a point before digits where no number or word
    precedes it (".5 hours", "$.20", as MGSM's English questions write them);
  - unambiguous forms read the same in every language; the language decides only a lone
    separator before exactly three digits: "1,500" is 1500 and "1.500" is 1.5 with a decimal
    point (en, zh, ja, th, bn, sw, and when no language is given), the other way round with
    a decimal comma (de, fr, es, ru, ...); "1 500" is 1500 where thousands are grouped with
    spaces (fr, es, ru, as MGSM's translations write them), else 1 and 500; a leading 0
    ("0,125") is always a decimal;
  - a mark repeated between single numbers is a list ("1,2,3" is 1, 2 and 3).
  A response with no number has no answer (never right); the comparison is numeric up to
  float rounding (relative 1e-6).

``mapo`` reproduces the released evaluation (NJUNLP/MAPO Evaluation/report_result.py,
extract_last_num, commit 4db4086), quirks included: a comma between two digits is deleted
(left to right, without overlap: "1,2,3" reads "12,3"), then the last run of digits with an
optional ".digits" is the answer; no sign ("-5" is 5), no decimal comma ("2,5" is 25), a
period before three digits is a decimal ("1.500" is 1.5); "no number" reads 0.0 (right when
the reference is 0); right when |answer - reference| < 1e-2, the reference being read the
same way. Python's \\d matches any Unicode decimal digit and float() accepts them, so the
released code does read Bengali, Thai and full-width digits.
"""
import math
import re
import unicodedata

METHODS = ("lna", "mapo")

# Conventions of languages beyond the default (decimal point, no plain-space grouping).
DECIMAL_COMMA = {"de", "fr", "es", "ru", "it", "pt", "id", "tr", "vi"}
SPACE_GROUPING = {"fr", "es", "ru"}  # a lone "1 500" is 1500 (MGSM's translations write so)

_MINUS = "-\u2212\uff0d"  # hyphen-minus, minus sign, full-width hyphen-minus
_CURRENCY = "$€£¥₹৳฿₽"
# separator characters between digit runs, mapped to their role
_SEP = {",": ",", ".": ".", "\uff0c": ",", "\uff0e": ".",  # full-width comma and period
        "\u066b": "d",  # Arabic decimal separator: decimal only
        "\u066c": "g", "'": "g", "\u2019": "g", "\u00a0": "g", "\u202f": "g", "\u2009": "g",  # groups only
        " ": "s"}  # plain space: groups (a lone one only where the language groups so)
_CHUNK = re.compile(
    r"(?P<sign>[" + _MINUS + r"][" + _CURRENCY + r"]?)?"
    r"(?P<point>(?<![\w.,])[.\uff0e])?"  # ".5 hours", "$.20" (as MGSM's English writes them)
    r"(?P<body>\d+(?:[" + "".join(_SEP) + r"]\d+)*)"
)
_DIGITS = re.compile(r"\d+")


def numbers(text: str, lang: str | None = None) -> list[float]:
    """Every number of `text`, in order, read by lna's rules for language `lang`."""
    comma_decimal = lang in DECIMAL_COMMA
    space_groups = lang in SPACE_GROUPING
    out = []
    for m in _CHUNK.finditer(text or ""):
        body = m["body"]
        runs = list(_DIGITS.finditer(body))
        groups = [_ascii(r.group()) for r in runs]
        seps = [_SEP[body[r.start() - 1]] for r in runs[1:]]  # the character between two runs
        if m["point"]:  # the first run is a fraction; the rest reads on its own
            values = [float("0." + groups[0])] + _read_chunk(groups[1:], seps[1:], comma_decimal, space_groups)
        else:
            values = _read_chunk(groups, seps, comma_decimal, space_groups)
        if m["sign"] and not _operand_before(text, m.start()):
            values[0] = -values[0]
        out.extend(values)
    return out


def extract_answer(text: str, lang: str | None = None, *, method: str = "lna") -> float | None:
    """The answer of a response: its last number, or None where it has none."""
    if method == "mapo":
        return _mapo_last(text)
    if method != "lna":
        raise ValueError(f"unknown extraction method {method!r}: use one of {', '.join(METHODS)}")
    found = numbers(text, lang)
    return found[-1] if found else None


def parse_gold(gold) -> float | None:
    """A reference answer: a number, or a numeric string as datasets write them ("18", "8.0",
    "2,125", "-3"); None for anything else (empty, words, NaN)."""
    if isinstance(gold, bool) or gold is None:
        return None
    try:
        value = float(gold if isinstance(gold, (int, float)) else str(gold).strip().replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def is_correct(text: str, gold, lang: str | None = None, *, method: str = "lna") -> bool:
    """Is the answer of `text` the reference answer `gold`?"""
    if method == "mapo":  # the released rule: missing numbers read 0.0, absolute tolerance 1e-2
        pred, ref = _mapo_last(text), _mapo_last(str(gold))
        return abs((pred or 0.0) - (ref or 0.0)) < 1e-2
    pred, ref = extract_answer(text, lang, method=method), parse_gold(gold)
    if pred is None or ref is None:
        return False
    return abs(pred - ref) <= 1e-6 * max(1.0, abs(ref))


# -- lna's reading of one run of digits and separators ------------------------------------
def _read_chunk(groups: list, seps: list, comma_decimal: bool, space_groups: bool) -> list[float]:
    """Numbers in digit groups g[0..k] separated by seps[i] (between g[i] and g[i+1])."""
    decimal_mark = "," if comma_decimal else "."
    out, i, before = [], 0, None  # `before`: the separator in front of the current number
    while i < len(groups):
        j, gsep = _grouping(groups, seps, i)
        if j == i + 1 and (gsep == decimal_mark or (gsep == "s" and not space_groups)):
            # a lone "1,500" / "1.500" / "1 500": the language decides; a decimal mark stays a
            # decimal unless the other mark follows as one ("1,500.5" is 1500.5 everywhere)
            follows = seps[j] if j < len(seps) else None
            if gsep == "s" or not (follows in (",", ".", "d") and follows != gsep):
                j, gsep = i, None
        digits = "".join(groups[i:j + 1])
        frac = ""
        mark = seps[j] if j < len(seps) else None
        after = seps[j + 1] if j + 1 < len(seps) else None
        if mark in (",", ".", "d") and mark != gsep and before != mark and after != mark:
            frac = groups[j + 1]  # a decimal (a mark repeated around it is a list instead)
            j += 1
        out.append(float(digits + ("." + frac if frac else "")))
        before = seps[j] if j < len(seps) else None
        i = j + 1
    return out


def _grouping(groups: list, seps: list, i: int) -> tuple[int, str | None]:
    """(index of the last group of the grouped integer starting at groups[i], its separator)."""
    first = groups[i]
    if len(first) > 3 or first[0] == "0":  # a grouped integer starts with 1-3 digits, not 0
        return i, None
    j, gsep = i, None
    while j < len(seps) and seps[j] != "d" and seps[j] == (gsep or seps[j]) and len(groups[j + 1]) == 3:
        gsep, j = seps[j], j + 1
    if j > i:
        return j, gsep
    # Indian grouping: 1-2 digits, groups of two, a last group of three ("12,34,567")
    if len(first) <= 2 and i < len(seps) and seps[i] == ",":
        j = i
        while j < len(seps) and seps[j] == "," and len(groups[j + 1]) == 2:
            j += 1
        if j > i and j < len(seps) and seps[j] == "," and len(groups[j + 1]) == 3:
            return j + 1, ","
    return i, None


# Scripts written without spaces between words: a minus right after their letters is a sign.
_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "HALFWIDTH KATAKANA")


def _operand_before(text: str, pos: int) -> bool:
    """Does what precedes a '-' at `pos` make it an operator or a hyphen ("10-3", "x-1",
    "(a)-2", "COVID-19") rather than a sign ("= -5", "答案是-5")?"""
    if pos == 0:
        return False
    c = text[pos - 1]
    if c.isdigit() or c in ")]）】":
        return True
    if not (c.isalnum() or c == "_"):
        return False
    return not unicodedata.name(c, "").startswith(_UNSPACED)


def _ascii(digits: str) -> str:
    return "".join(str(unicodedata.decimal(c)) for c in digits)


# -- the released method --------------------------------------------------------------------
# Same semantics as MAPO's extract_last_num (re.sub scans left to right without overlap).
_MAPO_COMMA = re.compile(r"(\d),(\d)")
_MAPO_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _mapo_last(text: str) -> float | None:
    joined = _MAPO_COMMA.sub(lambda m: m.group(1) + m.group(2), text or "")
    found = _MAPO_NUMBER.findall(joined)
    return float(found[-1]) if found else None

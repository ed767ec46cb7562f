"""Which language a generated text is in: a language identifier and a script check
(lna-steer's measures).

- Language: py3langid (the `steer` extra: a maintained fork of langid.py, a naive Bayes
  model over byte n-grams for 140 labels, shipped inside the wheel, 4.6 MB, numpy only, no
  download), over all its labels, not only the languages asked about: text that is in
  none of them (a random model's bytes) is then not forced into one. Its labels map to
  lna's codes through the language registry; Wu and Cantonese (wuu, yue), which it tells
  apart from Mandarin on short texts, count as zh. Control characters and U+FFFD (what
  decoding leaves of invalid UTF-8, e.g. a byte-level model's stray bytes) are removed
  first: their bytes look like CJK to a byte n-gram model. A text without letters is "none".
- Script: the share of the text's letters (Unicode category L) in the script of the
  language (lna.core.languages: ISO 15924; Chinese is Han, Japanese Han, Hiragana or Katakana,
  Korean Hangul or Han). It cannot tell languages of one script apart (en/de/fr/sw, or
  zh/ja's Han), and it says nothing about words; it needs no model.
"""
import functools

from lna.core.errors import LnaError

# lna's script codes (ISO 15924) that Unicode splits or merges.
SCRIPT_PARTS = {"Hans": ("Hani",), "Hant": ("Hani",), "Jpan": ("Hani", "Hira", "Kana"), "Kore": ("Hang", "Hani"),
                "Hang": ("Hang", "Hani")}
CHINESE = ("wuu", "yue")  # py3langid labels of Chinese varieties, counted as zh
NONE = "none"
INSTALL = "pip install 'lna[steer]'"


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("py3langid") is not None


def check() -> None:
    """One line, before any work, where the identifier is not installed."""
    if not available():
        raise LnaError(f"lna-steer identifies the language of outputs with py3langid, which is not installed: "
                       f"{INSTALL}")


@functools.lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@functools.lru_cache(maxsize=None)  # identify maps all 140 labels a call; the registry's lookup scans
def code_of(label: str) -> str:
    """lna's code for a py3langid label (the label itself where the registry has none)."""
    from lna.core import languages

    if label in CHINESE:
        return "zh"
    try:
        return languages.get(label).code
    except LnaError:
        return label


def identify(text: str) -> tuple[str, float]:
    """(language code, its probability), or ("none", 0.0) for a text without letters. The
    probability is py3langid's normalized one summed over the labels of that code (zh, wuu
    and yue are all zh: a Chinese sentence splits its probability among them)."""
    import regex

    text = regex.sub(r"[\p{C}\uFFFD]+", " ", text)
    if not _letters(text):
        return NONE, 0.0
    check()
    by_code: dict = {}
    for label, prob in _identifier().rank(text):
        code = code_of(label)
        by_code[code] = by_code.get(code, 0.0) + float(prob)
    return max(by_code.items(), key=lambda kv: kv[1])


@functools.lru_cache(maxsize=None)
def _pattern(script: str):
    import regex

    parts = SCRIPT_PARTS.get(script, (script,))
    try:
        return regex.compile("|".join(rf"\p{{sc={p}}}" for p in parts))
    except regex.error:
        raise LnaError(f"unknown script {script!r} (ISO 15924 codes such as Latn, Cyrl, Hans)") from None


def _letters(text: str) -> list:
    import regex

    return regex.findall(r"\p{L}", text)


def script_share(text: str, lang: str) -> tuple[float, int]:
    """(share of the text's letters in `lang`'s script, number of letters); (0.0, 0) without letters."""
    from lna.core import languages

    letters = _letters(text)
    if not letters:
        return 0.0, 0
    pattern = _pattern(languages.get(lang).script)
    return sum(1 for ch in letters if pattern.fullmatch(ch)) / len(letters), len(letters)

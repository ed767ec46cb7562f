"""The language registry: code, English name, NLLB code and script of each language.

The ten languages of the study come first, in the study's order; more can be added with
`register`. `--langs all` means every language the dataset has (see lna.data).
"""
from dataclasses import dataclass

from lna.errors import LnaError


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1 as in MGSM file names
    name: str  # English name, as in the prompt template and MSVAMP file names
    nllb: str  # FLORES-200 / NLLB code (alignment scoring)
    script: str  # ISO 15924


STUDY = ("en", "zh", "ru", "de", "fr", "es", "ja", "sw", "th", "bn")

_REGISTRY: dict[str, Language] = {}


def register(code: str, name: str, nllb: str, script: str) -> Language:
    lang = Language(code, name, nllb, script)
    _REGISTRY[code] = lang
    return lang


for _row in [
    ("en", "English", "eng_Latn", "Latn"),
    ("zh", "Chinese", "zho_Hans", "Hans"),
    ("ru", "Russian", "rus_Cyrl", "Cyrl"),
    ("de", "German", "deu_Latn", "Latn"),
    ("fr", "French", "fra_Latn", "Latn"),
    ("es", "Spanish", "spa_Latn", "Latn"),
    ("ja", "Japanese", "jpn_Jpan", "Jpan"),
    ("sw", "Swahili", "swh_Latn", "Latn"),
    ("th", "Thai", "tha_Thai", "Thai"),
    ("bn", "Bengali", "ben_Beng", "Beng"),
    # Beyond the study: MGSM also has Telugu; others for datasets users bring.
    ("te", "Telugu", "tel_Telu", "Telu"),
    ("ar", "Arabic", "arb_Arab", "Arab"),
    ("hi", "Hindi", "hin_Deva", "Deva"),
    ("ko", "Korean", "kor_Hang", "Hang"),
    ("it", "Italian", "ita_Latn", "Latn"),
    ("pt", "Portuguese", "por_Latn", "Latn"),
    ("vi", "Vietnamese", "vie_Latn", "Latn"),
    ("id", "Indonesian", "ind_Latn", "Latn"),
    ("tr", "Turkish", "tur_Latn", "Latn"),
]:
    register(*_row)


def get(code_or_name: str) -> Language:
    """Look a language up by code ("en") or English name ("English"), case-insensitively."""
    key = code_or_name.strip()
    if key in _REGISTRY:
        return _REGISTRY[key]
    for lang in _REGISTRY.values():
        if key.lower() in (lang.code.lower(), lang.name.lower()):
            return lang
    known = ", ".join(_REGISTRY)
    raise LnaError(f"unknown language {code_or_name!r}: use one of {known} (or register it)")


def code_of(code_or_name: str) -> str:
    return get(code_or_name).code


def parse_langs(spec: str | None, available: list[str] | None = None) -> list[str]:
    """Parse `--langs all|en,zh,...` into codes; `all` means every available language.

    With `available` given, a requested language the data lacks is an error naming both.
    """
    if spec is None or spec.strip().lower() == "all":
        if available is None:
            return list(STUDY)
        return list(available)
    codes = []
    for part in spec.split(","):
        if part.strip():
            code = code_of(part)
            if code not in codes:
                codes.append(code)
    if not codes:
        raise LnaError("--langs is empty: give 'all' or codes such as en,zh,ja")
    if available is not None:
        missing = [c for c in codes if c not in available]
        if missing:
            raise LnaError(
                f"the data has no {', '.join(missing)}: it has {', '.join(available)}"
            )
    return codes

"""The language registry: code, English name, NLLB code and script of each language.

The study's ten languages come first, in the study's order: the order of the authors'
released artefacts (activation counts and neuron masks, ../shared/data/reference),
en ru es fr de zh ja bn th sw. The paper's prose names them in another order; the paper's
tables list them as PAPER_TABLE_ORDER. `--langs study` selects the ten; `--langs all` means
every language the dataset has (see lna.inputs.data); more languages can be added with `register`.
"""
from dataclasses import dataclass

from lna.core.errors import LnaError


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1 as in MGSM file names (ISO 639-3 where there is no 639-1 code)
    name: str  # English name, as in the prompt template and MSVAMP file names
    nllb: str  # FLORES-200 / NLLB code (alignment scoring)
    script: str  # ISO 15924
    aliases: tuple = ()  # other codes data sets use (ISO 639-3 as in AfriMGSM, ...)


STUDY = ("en", "ru", "es", "fr", "de", "zh", "ja", "bn", "th", "sw")
# The order of the paper's tables and figures (low-resource first, English last).
PAPER_TABLE_ORDER = ("bn", "th", "sw", "ja", "zh", "ru", "de", "es", "fr", "en")

_REGISTRY: dict[str, Language] = {}


def register(code: str, name: str, nllb: str, script: str, aliases: tuple = ()) -> Language:
    lang = Language(code, name, nllb, script, tuple(aliases))
    _REGISTRY[code] = lang
    return lang


for _row in [
    # the study's ten, in the study's order
    ("en", "English", "eng_Latn", "Latn", ("eng",)),
    ("ru", "Russian", "rus_Cyrl", "Cyrl", ("rus",)),
    ("es", "Spanish", "spa_Latn", "Latn", ("spa",)),
    ("fr", "French", "fra_Latn", "Latn", ("fra",)),
    ("de", "German", "deu_Latn", "Latn", ("deu",)),
    ("zh", "Chinese", "zho_Hans", "Hans", ("zho", "zh-Hans", "zh-CN")),
    ("ja", "Japanese", "jpn_Jpan", "Jpan", ("jpn",)),
    ("bn", "Bengali", "ben_Beng", "Beng", ("ben", "Bangla")),
    ("th", "Thai", "tha_Thai", "Thai", ("tha",)),
    ("sw", "Swahili", "swh_Latn", "Latn", ("swa", "swh")),
    # MGSM's eleventh
    ("te", "Telugu", "tel_Telu", "Telu", ("tel",)),
    # others in multilingual reasoning / FLORES-style sets users bring (MGSM translations,
    # AfriMGSM, MSVAMP-style JSON named by English name, FLORES-200 subsets)
    ("zh-Hant", "Traditional Chinese", "zho_Hant", "Hant", ("zh-TW",)),
    ("ar", "Arabic", "arb_Arab", "Arab", ("ara", "arb")),
    ("hi", "Hindi", "hin_Deva", "Deva", ("hin",)),
    ("ko", "Korean", "kor_Hang", "Hang", ("kor",)),
    ("it", "Italian", "ita_Latn", "Latn", ("ita",)),
    ("pt", "Portuguese", "por_Latn", "Latn", ("por",)),
    ("vi", "Vietnamese", "vie_Latn", "Latn", ("vie",)),
    ("id", "Indonesian", "ind_Latn", "Latn", ("ind",)),
    ("tr", "Turkish", "tur_Latn", "Latn", ("tur",)),
    ("nl", "Dutch", "nld_Latn", "Latn", ("nld",)),
    ("pl", "Polish", "pol_Latn", "Latn", ("pol",)),
    ("uk", "Ukrainian", "ukr_Cyrl", "Cyrl", ("ukr",)),
    ("cs", "Czech", "ces_Latn", "Latn", ("ces",)),
    ("ro", "Romanian", "ron_Latn", "Latn", ("ron",)),
    ("hu", "Hungarian", "hun_Latn", "Latn", ("hun",)),
    ("el", "Greek", "ell_Grek", "Grek", ("ell",)),
    ("bg", "Bulgarian", "bul_Cyrl", "Cyrl", ("bul",)),
    ("sr", "Serbian", "srp_Cyrl", "Cyrl", ("srp",)),
    ("sv", "Swedish", "swe_Latn", "Latn", ("swe",)),
    ("da", "Danish", "dan_Latn", "Latn", ("dan",)),
    ("fi", "Finnish", "fin_Latn", "Latn", ("fin",)),
    ("nb", "Norwegian Bokmal", "nob_Latn", "Latn", ("nob", "no", "Norwegian")),
    ("ca", "Catalan", "cat_Latn", "Latn", ("cat",)),
    ("eu", "Basque", "eus_Latn", "Latn", ("eus",)),
    ("he", "Hebrew", "heb_Hebr", "Hebr", ("heb",)),
    ("fa", "Persian", "pes_Arab", "Arab", ("fas", "pes", "Farsi")),
    ("ur", "Urdu", "urd_Arab", "Arab", ("urd",)),
    ("mr", "Marathi", "mar_Deva", "Deva", ("mar",)),
    ("ne", "Nepali", "npi_Deva", "Deva", ("nep", "npi")),
    ("gu", "Gujarati", "guj_Gujr", "Gujr", ("guj",)),
    ("pa", "Punjabi", "pan_Guru", "Guru", ("pan",)),
    ("ta", "Tamil", "tam_Taml", "Taml", ("tam",)),
    ("kn", "Kannada", "kan_Knda", "Knda", ("kan",)),
    ("ml", "Malayalam", "mal_Mlym", "Mlym", ("mal",)),
    ("si", "Sinhala", "sin_Sinh", "Sinh", ("sin",)),
    ("my", "Burmese", "mya_Mymr", "Mymr", ("mya",)),
    ("km", "Khmer", "khm_Khmr", "Khmr", ("khm",)),
    ("lo", "Lao", "lao_Laoo", "Laoo", ("lao",)),
    ("ka", "Georgian", "kat_Geor", "Geor", ("kat",)),
    ("hy", "Armenian", "hye_Armn", "Armn", ("hye",)),
    ("kk", "Kazakh", "kaz_Cyrl", "Cyrl", ("kaz",)),
    ("uz", "Uzbek", "uzn_Latn", "Latn", ("uzb", "uzn")),
    ("ms", "Malay", "zsm_Latn", "Latn", ("msa", "zsm")),
    ("tl", "Tagalog", "tgl_Latn", "Latn", ("tgl", "fil", "Filipino")),
    ("jv", "Javanese", "jav_Latn", "Latn", ("jav",)),
    ("am", "Amharic", "amh_Ethi", "Ethi", ("amh",)),
    ("ha", "Hausa", "hau_Latn", "Latn", ("hau",)),
    ("ig", "Igbo", "ibo_Latn", "Latn", ("ibo",)),
    ("yo", "Yoruba", "yor_Latn", "Latn", ("yor",)),
    ("zu", "Zulu", "zul_Latn", "Latn", ("zul",)),
    ("xh", "Xhosa", "xho_Latn", "Latn", ("xho",)),
    ("so", "Somali", "som_Latn", "Latn", ("som",)),
    ("om", "Oromo", "gaz_Latn", "Latn", ("orm", "gaz")),
    ("rw", "Kinyarwanda", "kin_Latn", "Latn", ("kin",)),
    ("sn", "Shona", "sna_Latn", "Latn", ("sna",)),
    ("st", "Southern Sotho", "sot_Latn", "Latn", ("sot", "Sesotho")),
    ("lg", "Ganda", "lug_Latn", "Latn", ("lug", "Luganda")),
    ("ln", "Lingala", "lin_Latn", "Latn", ("lin",)),
    ("wo", "Wolof", "wol_Latn", "Latn", ("wol",)),
    ("ee", "Ewe", "ewe_Latn", "Latn", ("ewe",)),
    ("tw", "Twi", "twi_Latn", "Latn", ("twi", "ak", "aka", "Akan")),
]:
    register(*_row)


def get(code_or_name: str) -> Language:
    """Look a language up by code ("en") or English name ("English"), case-insensitively."""
    key = code_or_name.strip()
    if key in _REGISTRY:
        return _REGISTRY[key]
    for lang in _REGISTRY.values():
        if key.lower() in (lang.code.lower(), lang.name.lower(), *(a.lower() for a in lang.aliases)):
            return lang
    known = ", ".join(_REGISTRY)
    raise LnaError(f"unknown language {code_or_name!r}: use one of {known} (or register it)")


def code_of(code_or_name: str) -> str:
    return get(code_or_name).code


def parse_langs(spec: str | None, available: list[str] | None = None) -> list[str]:
    """Parse `--langs all|study|en,zh,...` into codes; `all` means every available language,
    `study` the study's ten in the study's order (STUDY).

    With `available` given, a requested language the data lacks is an error naming both.
    """
    if spec is None or spec.strip().lower() == "all":
        if available is None:
            return list(STUDY)
        return list(available)
    if spec.strip().lower() == "study":
        spec = ",".join(STUDY)
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


def order(codes, by=STUDY) -> list:
    """`codes` sorted by `by` (STUDY or PAPER_TABLE_ORDER); codes not in it follow, as given."""
    rank = {c: i for i, c in enumerate(by)}
    return sorted(codes, key=lambda c: rank.get(c, len(rank)))


def all_note(codes) -> str | None:
    """What `--langs all` picked, where it differs from the study's ten (e.g. MGSM adds te)."""
    extra = [c for c in codes if c not in STUDY]
    missing = [c for c in STUDY if c not in codes]
    if not extra and not missing:
        return None
    parts = [f"--langs all: the data has {', '.join(codes)}"]
    if extra:
        parts.append(f"beyond the study's ten: {', '.join(extra)}")
    if missing:
        parts.append(f"not {', '.join(missing)}")
    return "; ".join(parts) + " (--langs study for the study's ten)"

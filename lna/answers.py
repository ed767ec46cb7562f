"""Answer extraction for math word problems (MGSM, MSVAMP), as MathOctopus/MAPO evaluate.

The answer of a response is its last number; it is right when it equals the gold answer
numerically. (Contract used by lna-eval and lna-align; lna-eval's issue refines it.)
"""
import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(text: str) -> float | None:
    """The last number in `text` (thousands separators dropped), or None."""
    found = _NUMBER.findall(text or "")
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def is_correct(text: str, gold) -> bool:
    """Does the last number of `text` equal the gold answer (a number or numeric string)?"""
    pred = extract_answer(text)
    if pred is None:
        return False
    try:
        ref = float(str(gold).replace(",", ""))
    except ValueError:
        return False
    return abs(pred - ref) < 1e-6 * max(1.0, abs(ref))

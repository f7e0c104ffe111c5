"""Grading of final answers to math problems.

Extraction: the last line of the form ``Answer: X`` (case-insensitive, an
optional ``Final`` and markdown bold allowed) wins; without one, the content of
the last balanced ``\\boxed{...}``. Comparison: plain numbers (integers,
decimals, ``a/b``, with optional sign and thousands commas) compare exactly as
rationals; anything else goes to math-verify (Hugging Face), which parses
LaTeX into sympy and checks symbolic/numeric equivalence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from rlhfctl.errors import DataError, RlhfctlError

_ANSWER_LINE = re.compile(
    r"^[ \t>#*]*(?:final[ \t]+)?answer[ \t*]*:[ \t*]*(.*)$", re.IGNORECASE | re.MULTILINE
)
_BOXED = re.compile(r"\\boxed\s*\{")
_DECIMAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")
_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_WHITESPACE = re.compile(r"\s+")
# Spellings that render identically, so votes for them should pool.
_LATEX_SYNONYMS = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""))


def _braced(text: str, open_at: int) -> str | None:
    """Content of the brace group opening at `text[open_at]`, or None if unbalanced.

    Backslash-escaped braces (``\\{``) are content, not grouping.
    """
    depth, i = 0, open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` in `text` (nested braces kept)."""
    for match in reversed(list(_BOXED.finditer(text))):
        content = _braced(text, match.end() - 1)
        if content is not None:
            return content
    return None


def _strip_trailing(answer: str) -> str:
    return re.sub(r"[\s.]+$", "", answer.strip())


def _unwrap(answer: str) -> str:
    """Drop math delimiters and a whole-answer ``\\boxed{}`` (``$\\boxed{5}$.`` -> ``5``)."""
    previous = None
    while answer != previous:
        previous = answer
        answer = _strip_trailing(answer)
        boxed = _BOXED.match(answer)
        if len(answer) >= 2 and answer[0] == answer[-1] == "$" and "$" not in answer.strip("$"):
            answer = answer.strip("$")
        elif answer.startswith(("\\(", "\\[")) and answer.endswith(("\\)", "\\]")):
            answer = answer[2:-2]
        elif boxed:
            content = _braced(answer, boxed.end() - 1)
            if content is not None and boxed.end() + len(content) + 1 == len(answer):
                answer = content
    return answer


def extract_answer(response: str) -> str | None:
    """The raw final answer of `response`: last ``Answer:`` line, else last ``\\boxed{}``."""
    for match in reversed(list(_ANSWER_LINE.finditer(response))):
        answer = _unwrap(match.group(1))
        if answer:
            return answer
    boxed = last_boxed(response)
    if boxed is None:
        return None
    return _unwrap(boxed) or None


def parse_number(text: str) -> Fraction | None:
    """`text` as an exact rational if it is a plain number (``1,000``, ``+64.0``, ``3/4``), else None."""
    text = text.strip()
    if _DECIMAL.fullmatch(text):
        return Fraction(text.replace(",", ""))
    fraction = _FRACTION.fullmatch(text)
    if fraction and int(fraction.group(2)) != 0:
        return Fraction(int(fraction.group(1)), int(fraction.group(2)))
    return None


def canonical_key(answer: str) -> str:
    """A vote key under which equal answers collide (``64``/``64.0``/``+64`` -> ``64``, ``0.5`` -> ``1/2``)."""
    answer = _unwrap(answer)
    number = parse_number(answer)
    if number is not None:
        return str(number)
    for spelling, canonical in _LATEX_SYNONYMS:
        answer = answer.replace(spelling, canonical)
    return _WHITESPACE.sub("", answer)


def _as_latex(answer: str) -> str:
    # math-verify's LaTeX extractor wants math delimiters; bare "\frac12" parses to nothing.
    return answer if "$" in answer or "\\(" in answer or "\\[" in answer else f"${answer}$"


MATH_VERIFY_TIMEOUT_S = 5


def math_verify_equal(gold: str, prediction: str) -> bool:
    """Symbolic equivalence via math-verify; any failure inside it counts as not equal.

    math-verify times out with signal.alarm, which only works in the main
    thread: there each parse and comparison gets MATH_VERIFY_TIMEOUT_S
    seconds (a timeout grades wrong); in other threads the timeout is off.
    """
    import logging
    import threading

    try:
        from math_verify import parse, verify
    except ImportError as exc:
        raise RlhfctlError("grading non-numeric math answers needs math-verify: pip install math-verify") from exc
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # not its "timeout is disabled" warning per call
    timeout = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        parsed = []
        for text in (gold, prediction):
            expr = parse(_as_latex(text), parsing_timeout=timeout) or parse(text, parsing_timeout=timeout)
            if not expr:
                return False
            parsed.append(expr)
        return bool(verify(parsed[0], parsed[1], timeout_seconds=timeout))
    except Exception:
        return False


def answers_match(gold: str, prediction: str) -> bool:
    """Whether extracted `prediction` equals `gold`: exact for plain numbers, else math-verify."""
    gold, prediction = _unwrap(gold), _unwrap(prediction)
    gold_number, predicted_number = parse_number(gold), parse_number(prediction)
    if gold_number is not None and predicted_number is not None:
        return gold_number == predicted_number
    if canonical_key(gold) == canonical_key(prediction):
        return True
    return math_verify_equal(gold, prediction)


class MathGrader:
    """Grades free-form math answers against the record's ``answer`` field."""

    name = "math"

    def extract(self, response: str) -> str | None:
        """Canonical final answer (the majority-vote key), or None if none is stated."""
        answer = extract_answer(response)
        return None if answer is None else canonical_key(answer)

    def is_correct(self, response: str, record: Mapping[str, Any]) -> bool:
        """Whether the final answer of `response` equals ``record["answer"]``; no answer is wrong."""
        gold = record.get("answer")
        if gold is None or isinstance(gold, bool) or not str(gold).strip():
            raise DataError("<record>", None, "math grading needs a gold answer", field="answer")
        prediction = extract_answer(response)
        if prediction is None:
            return False
        return answers_match(str(gold), prediction)

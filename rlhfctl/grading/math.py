"""Grading of final answers to math problems.

Extraction follows the common evaluation harnesses. The first rule that finds
an answer wins (each takes the last occurrence in the response):

1. ``boxed``: the content of the last balanced ``\\boxed{...}`` (or ``\\fbox``);
2. ``answer_line``: a line ``Answer: X`` (an optional ``Final``, markdown
   bold and quote marks allowed);
3. ``answer_is``: "the (final) answer is X";
4. ``gsm8k``: GSM8K's ``#### X``;
5. ``last_number``: under flexible extraction only, the last number in the
   response.

A stated answer is cleaned: math delimiters and a whole-answer box are
dropped, and a number followed by prose or units (``$18.00``, ``11 apples.``,
``25%``) keeps the number. Gold answers in GSM8K form (``... #### 72``) are
read after the ``####``. Comparison: plain numbers (integers, decimals,
``a/b``, with optional sign and thousands commas) compare exactly as
rationals; anything else goes to math-verify (Hugging Face), which parses
LaTeX into sympy and checks symbolic/numeric equivalence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from rlhfctl.errors import DataError, RlhfctlError
from rlhfctl.grading.registry import Extracted

_ANSWER_LINE = re.compile(
    r"^[ \t>#*]*(?:final[ \t]+)?answer[ \t*]*:[ \t*]*(.*)$", re.IGNORECASE | re.MULTILINE
)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"\banswer\s+is\b[ \t:*]*([^\n]*)", re.IGNORECASE)
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
# A number as prose states it: optional sign and currency, thousands commas, decimals.
_PROSE_NUMBER = re.compile(r"[+-]?(?:\\?\$|[€£])?[ \t]*[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
# What may follow a number that is the whole answer: a percent sign, then nothing, punctuation
# and prose, or words (units, also as \text{...}) - not a letter glued to it ("2x") or more math
# ("3 \pi", "3, 4"). Degrees (^\circ) go with the percent sign.
_AFTER_NUMBER = re.compile(
    r"[ \t]*(?:\\?%|\^\s*\{?\\circ\}?)?"
    r"(?:$|[.;!)*]+(?:\s.*)?|,[ \t]+[A-Za-z].*|[ \t]+\(?[A-Za-z]{2,}.*|[ \t]*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z].*)", re.DOTALL)
_LAST_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d,]*\d)")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
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


def _number_stated(text: str) -> str | None:
    """The number a statement starts with when the rest is units or prose (``$1,200.50 a week`` -> ``1,200.50``)."""
    text = text.replace("{,}", ",")  # LaTeX's thousands separator
    match = _PROSE_NUMBER.match(text)
    if match is None or not _AFTER_NUMBER.fullmatch(text[match.end():]):
        return None
    number = re.sub(r"\\?\$|[€£\s]", "", match.group(0))
    return number[1:] if number.startswith("+") else number


def _statement(text: str) -> str | None:
    """The answer a statement gives: ``**$\\frac{1}{2}$**.`` -> ``\\frac{1}{2}``, ``18 dollars.`` -> ``18``."""
    text = text.replace("\u2212", "-").replace("**", "").replace("`", "").strip()
    nested = _ANSWER_IS.search(text)  # "Final Answer: The final answer is 5. I hope it is correct."
    if nested is not None:
        text = nested.group(1).strip()
    if text.startswith("$") and not text.startswith("$$") and text.count("$") >= 2 and not _PROSE_NUMBER.fullmatch(text):
        text = text[: text.index("$", 1) + 1]  # the inline math the statement opens with
    number = _number_stated(text)
    if number is not None:
        return number
    end = _SENTENCE_END.search(text)
    return _unwrap(text[: end.start()] if end else text) or None


def find_answer(response: str, flexible: bool = False) -> Extracted | None:
    """The final answer of `response` and the rule that found it (module docstring), or None."""
    boxed = last_boxed(response)
    if boxed is not None and _unwrap(boxed):
        return Extracted(_number_stated(_unwrap(boxed)) or _unwrap(boxed), "boxed")
    for rule, pattern in (("answer_line", _ANSWER_LINE), ("answer_is", _ANSWER_IS), ("gsm8k", _GSM8K)):
        for match in reversed(list(pattern.finditer(response))):
            answer = _statement(match.group(1))
            if answer:
                return Extracted(answer, rule)
    if flexible:
        numbers = _LAST_NUMBER.findall(response.replace("\u2212", "-"))
        if numbers:
            return Extracted(numbers[-1].lstrip("+"), "last_number")
    return None


def extract_answer(response: str, flexible: bool = False) -> str | None:
    """The final answer `response` states (see `find_answer`), or None."""
    found = find_answer(response, flexible)
    return None if found is None else found.answer


def gold_answer(gold: str) -> str:
    """A gold answer as stated: GSM8K's worked solution ``... #### 72`` gives ``72``."""
    if "####" in gold:
        gold = gold.rsplit("####", 1)[1]
    return _number_stated(gold.strip()) or _unwrap(gold)


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
    """Grades free-form math answers against the record's ``answer`` field.

    `flexible` adds the last-number rule (see the module docstring); the
    flexible grader is `MathGrader().with_extract("flexible")`.
    """

    name = "math"

    def __init__(self, flexible: bool = False):
        self.flexible = flexible

    def with_extract(self, mode: str) -> "MathGrader":
        """This grader with extraction `mode`: ``strict`` (the stated-answer rules) or ``flexible``."""
        return self if (mode == "flexible") == self.flexible else MathGrader(flexible=mode == "flexible")

    def find(self, response: str) -> Extracted | None:
        """The answer `response` states, with the rule that found it, or None."""
        return find_answer(response, self.flexible)

    def extract(self, response: str) -> str | None:
        """Canonical final answer (the majority-vote key), or None if none is stated."""
        answer = extract_answer(response, self.flexible)
        return None if answer is None else canonical_key(answer)

    def is_correct(self, response: str, record: Mapping[str, Any]) -> bool:
        """Whether the final answer of `response` equals ``record["answer"]``; no answer is wrong."""
        gold = record.get("answer")
        if gold is None or isinstance(gold, bool) or not str(gold).strip():
            raise DataError("<record>", None, "math grading needs a gold answer", field="answer")
        prediction = extract_answer(response, self.flexible)
        if prediction is None:
            return False
        return answers_match(gold_answer(str(gold)), prediction)

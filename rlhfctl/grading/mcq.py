"""Multiple-choice grading: the letter a response chooses, against the gold letter.

A response states its choice in one of the common forms, strongest first
(the name of each is the ``extract_rule`` recorded with it):

1. ``boxed``: ``\\boxed{C}`` (also ``\\boxed{(C)}``, ``\\boxed{\\text{C}}``);
2. ``answer_is``: an answer statement: ``Answer: C``, ``**Final answer:** (C)``,
   ``The answer is C``, ``the correct answer is: C.``;
3. ``paren``: a parenthesised letter on its own, ``(C)``;
4. ``letter_paren``: a letter with a closing parenthesis, ``C)``;
5. ``last_letter``: a lone letter ending the response, ``... so\n\nC.``

The last statement of the strongest form present is the choice. Letters are
capitals (a lower-case ``a`` is too often the article). A statement that names
two different letters (``Answer: A or C``, ``Answer: AC``, ``\\boxed{A, C}``),
or bare letters (forms 3 and 4) that disagree, choose nothing: graded wrong.

The prompt record carries ``answer`` (the gold letter, or the text of the
right choice) and ``choices`` (a list of option texts, lettered A, B, ...; or
a mapping letter -> text). The prompt text itself must show the options.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from rlhfctl.errors import DataError
from rlhfctl.grading.math import last_boxed
from rlhfctl.grading.registry import Extracted

_STATEMENT = re.compile(r"answer\s*(?:is\b|:)\s*(.*)", re.IGNORECASE)
_MARKUP = re.compile(r"\\text\{|\\textbf\{|\\mathrm\{|[*_`$]")
_HEAD = re.compile(r"^[\s(\[{:]*([A-Z]+)(?![A-Za-z0-9])")  # the first word, if it is all capitals
_ALSO = re.compile(r"^[\s)\]}.]*(?:,|/|&|\band\b|\bor\b)[\s(\[{]*([A-Z])(?![A-Za-z0-9])")
_PAREN = re.compile(r"\(([A-Z])\)")
_LETTER_PAREN = re.compile(r"(?<![A-Za-z0-9(])([A-Z])\)")
_LAST_LETTER = re.compile(r"(?:^|\s)\**([A-Z])\**[.!]?\s*$")


def _letter(text: str) -> str | None:
    """The single letter a statement names, or None (no letter, or two different ones)."""
    text = _MARKUP.sub("", text)
    head = _HEAD.match(text)
    if head is None:
        return None
    word = head.group(1)
    if len(word) != 1:  # "AC" names two letters; "CORRECT" is a word
        return None
    also = _ALSO.match(text[head.end():])
    if also is not None and also.group(1) != word:
        return None
    return word


def find_choice(response: str) -> Extracted | None:
    """The capital letter `response` chooses and the rule that found it, or None (no or an ambiguous choice)."""
    boxed = last_boxed(response)
    if boxed is not None:
        return _found(_letter(boxed), "boxed")
    statements = list(_STATEMENT.finditer(response))
    if statements:
        return _found(_letter(statements[-1].group(1).split("\n", 1)[0]), "answer_is")
    for rule, pattern in (("paren", _PAREN), ("letter_paren", _LETTER_PAREN)):
        letters = set(pattern.findall(response))
        if letters:
            return _found(letters.pop() if len(letters) == 1 else None, rule)
    last = _LAST_LETTER.search(response)
    return _found(last and last.group(1), "last_letter")


def _found(letter: str | None, rule: str) -> Extracted | None:
    return None if letter is None else Extracted(letter, rule)


def extract_choice(response: str) -> str | None:
    """The capital letter `response` chooses, or None (no choice, or an ambiguous one)."""
    found = find_choice(response)
    return None if found is None else found.answer


def _choice_letters(choices: Any) -> list[str] | None:
    if isinstance(choices, Mapping):
        return [str(k).strip().upper() for k in choices]
    if isinstance(choices, list):
        return list(string.ascii_uppercase[:len(choices)])
    return None


def gold_letter(record: Mapping[str, Any]) -> str:
    """The record's gold letter: ``answer`` as a letter, or as the text of one of its ``choices``."""
    gold, choices = record.get("answer"), record.get("choices")
    if gold is None or isinstance(gold, bool) or not str(gold).strip():
        raise DataError("<record>", None, "mcq grading needs a gold answer (a letter)", field="answer")
    text = str(gold).strip()
    letters = _choice_letters(choices)
    if len(text) == 1 and text.upper() in string.ascii_uppercase:
        if letters is not None and text.upper() not in letters:
            raise DataError("<record>", None, f"gold letter {text!r} is not one of the choices {''.join(letters)}", field="answer")
        return text.upper()
    texts = [str(c).strip() for c in (choices.values() if isinstance(choices, Mapping) else choices or [])]
    if letters is not None and text in texts:
        return letters[texts.index(text)]
    raise DataError("<record>", None, f"mcq answer {text!r} is neither a letter nor one of the choices", field="answer")


class MCQGrader:
    """Grades multiple-choice responses by the letter they choose."""

    name = "mcq"

    def with_extract(self, mode: str) -> "MCQGrader":
        """Extraction has one mode for letters; `mode` changes nothing."""
        return self

    def find(self, response: str) -> Extracted | None:
        """The chosen letter with the rule that found it, or None."""
        return find_choice(response)

    def extract(self, response: str) -> str | None:
        """The chosen letter (the majority-vote key), or None if none is chosen unambiguously."""
        return extract_choice(response)

    def is_correct(self, response: str, record: Mapping[str, Any]) -> bool:
        """Whether `response` chooses the gold letter; no choice, or two letters, is wrong."""
        gold = gold_letter(record)
        return extract_choice(response) == gold

"""Detokenisers of the zero-shot held-out sets, MDLM's conventions (kuleshov-group/mdlm ``dataloader.py``).

The LM1B, PTB, WikiText and LAMBADA test sets are distributed pre-tokenised (spaces around
punctuation, ``@-@`` number separators, ``<unk>``); MDLM undoes that on the raw text before its
tokenizer sees it, and its zero-shot perplexities are measured on the result. Each function below
applies the same rules in the same order (docs/sampling.md, "Evaluation", lists them). One
deliberate difference: MDLM's WikiText rule ``re.sub(r"/' [0-9]/", r"/'[0-9]/", s)`` (literal
slashes; it would write the characters ``[0-9]`` into the text) is left out: it never fires on
WikiText.
"""
from __future__ import annotations

import re
from collections.abc import Callable

_WT_REPLACE = (("s '", "s'"), (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
               (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "))
_WT_BRACKETS = ((re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"), (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
                (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"), (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
                (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"))
_WT_TAIL = (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u00b0 ", "\u00b0"), (" \n", "\n"),
            ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s"))


def wikitext_detokenizer(text: str) -> str:
    """WikiText: ``s '`` -> ``s'``; ``@-@ @,@ @.@`` joiners; no space before ``: ; . ! ? ,``; no
    padding inside ``() [] {} "" ''``; ``= = =`` headings; `` ° ``; spaces around newlines; ``N`` -> 1;
    `` 's`` -> ``'s``."""
    for old, new in _WT_REPLACE:
        text = text.replace(old, new)
    for pattern, repl in _WT_BRACKETS:
        text = pattern.sub(repl, text)
    for old, new in _WT_TAIL:
        text = text.replace(old, new)
    return text


def ptb_detokenizer(text: str) -> str:
    """PTB: `` 's`` / ``s ' `` / `` n't`` contractions; `` \\n `` -> newline; ``\\/`` -> ``/``; the
    number token ``N`` -> ``1`` (repeated, so runs of N are all replaced); ``$ 1`` / ``# 1`` joined;
    ``<unk>`` -> ``?``."""
    for old, new in ((" 's", "'s"), ("s ' ", "s' "), (" n't", "n't"), (" \n ", "\n"), ("\\/", "/")):
        text = text.replace(old, new)
    for _ in range(10):
        text = text.replace(" N ", " 1 ")
    for old, new in (("$ 1", "$1"), ("# 1", "#1"), ("<unk>", "?")):
        text = text.replace(old, new)
    return text


_LM1B_RULES: tuple[tuple[re.Pattern | str, str], ...] = (
    ("http : / / ", "http://"), ("https : / / ", "https://"),
    (re.compile(r" '(\w+)"), r"'\1"),
    (re.compile(r" (\w+) \. "), r" \1. "), (re.compile(r" (\w+) \.$"), r" \1."),
    (" ? ", "? "), (re.compile(r" \?$"), "?"), (" ! ", "! "), (re.compile(r" \!$"), "!"),
    (" , ", ", "), (" : ", ": "), (" ; ", "; "), (" / ", "/"),
    (re.compile(r"\" ([^\"]+) \""), r'"\1"'), (re.compile(r"' ([^']+) '"), r"'\1'"),
    (re.compile(r"\( ([^\(\)]+) \)"), r"(\1)"), (re.compile(r"\[ ([^\[\]]+) \]"), r"[\1]"),
    ("$ ", "$"), ("\u00a3 ", "\u00a3"),
)


def lm1b_detokenizer(text: str) -> str:
    """LM1B: ``http : / /`` URLs; `` 'word`` -> ``'word``; `` word . `` -> `` word. ``; no space before
    ``? ! , : ;``; `` / `` -> ``/``; no padding inside ``"" '' () []``; ``$ `` / ``£ `` joined."""
    for rule, repl in _LM1B_RULES:
        text = rule.sub(repl, text) if isinstance(rule, re.Pattern) else text.replace(rule, repl)
    return text


def lambada_detokenizer(text: str) -> str:
    """LAMBADA: curly double quotes -> ``"``; stripped and prefixed with a newline (as MDLM)."""
    return "\n" + text.replace("\u201c", '"').replace("\u201d", '"').strip()


def no_detokenizer(text: str) -> str:
    return text


DETOKENIZERS: dict[str, Callable[[str], str]] = {
    "lm1b": lm1b_detokenizer, "ptb": ptb_detokenizer, "wikitext": wikitext_detokenizer,
    "lambada": lambada_detokenizer, "none": no_detokenizer,
}


def detokenizer_for(set_name: str, requested: str | None = None) -> str:
    """The detokeniser of a set: ``requested`` when given, else by the set's NAME (``lm1b``, ``ptb``,
    ``wikitext*``, ``lambada*``), else ``none``."""
    if requested is not None:
        if requested not in DETOKENIZERS:
            raise ValueError(f"unknown detokenizer {requested!r}; choose from {sorted(DETOKENIZERS)}")
        return requested
    name = set_name.lower()
    if name.startswith("wikitext"):
        return "wikitext"
    if name.startswith("lambada"):
        return "lambada"
    return name if name in ("lm1b", "ptb") else "none"

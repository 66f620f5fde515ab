"""Escaping for every human output: control characters made visible, and Slack's markup escaped.

Names, values and messages in findings come from manifests, the cluster and stored runs, so they
are hostile input: an ESC sequence can move the cursor and erase a FAIL line, a carriage return
can overwrite it, a newline can forge a row, a bidi override can reorder what a reader sees, and
Slack parses ``<!channel>`` or ``<@U123>`` as a mention. Renderers (table, Markdown, JUnit, HTML,
Slack, log lines, error messages) pass such strings through these functions; docs/adversarial-inputs.md
lists which output applies which.

``visible`` replaces, with a backslash escape a reader can see (``\\x1b``, ``\\r``, ``\\u202e``):

- C0 controls U+0000-U+001F (newline and tab only where the output is multi-line text), DEL U+007F
  and C1 controls U+0080-U+009F (ECMA-48: terminals act on them, U+009B is a one-byte CSI);
- Unicode bidirectional formatting characters (U+061C, U+200E, U+200F, U+202A-U+202E,
  U+2066-U+2069; Unicode TR #9, the "Trojan Source" characters), line and paragraph separators
  (U+2028, U+2029) and the byte-order mark U+FEFF, which editors and terminals render invisibly.

``slack_text`` is Slack's documented escaping for text objects
(https://api.slack.com/reference/surfaces/formatting#escaping): ``&`` -> ``&amp;``,
``<`` -> ``&lt;``, ``>`` -> ``&gt;``, so no manifest string becomes a mention, link or command.
"""

from __future__ import annotations

import re

__all__ = ["slack_clip", "slack_text", "visible", "xml_text"]

_BIDI_AND_INVISIBLE = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff"
_SINGLE_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI_AND_INVISIBLE}]")
_MULTI_LINE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI_AND_INVISIBLE}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Code points XML 1.0 does not allow at all (§2.2 Char), beyond what `visible` already replaces.
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")
_SLACK = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ENTITY_TAIL = re.compile(r"&[a-z]{0,3}$")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control, bidi and invisible separator character shown as an escape.

    ``multiline`` keeps ``\\n`` and ``\\t`` (for blocks such as remediation YAML); carriage
    returns are always shown, so no line can be overwritten.
    """
    pattern = _MULTI_LINE if multiline else _SINGLE_LINE
    return pattern.sub(_escape, text)


def xml_text(text: str, *, multiline: bool = False) -> str:
    """``visible`` plus the code points XML 1.0 forbids (lone surrogates, U+FFFE, U+FFFF)."""
    return _NOT_XML.sub(_escape, visible(text, multiline=multiline))


def slack_text(text: str, *, multiline: bool = False) -> str:
    """Manifest-derived text for a Slack text object: visible controls, then ``& < >`` escaped."""
    return visible(text, multiline=multiline).translate(_SLACK)


def slack_clip(text: str, limit: int) -> str:
    """Clip already-escaped Slack text to ``limit`` characters without cutting an entity in two."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    return _ENTITY_TAIL.sub("", head) + "…"

"""Pure text measurements behind the rule-checked principles: words, sentences, lines, list items.

Every function takes any ``str`` (empty, markdown, any script) and never fails on its content; a
value that is not a ``str`` raises ``ValueError``. Text is first normalised with Unicode NFKC
(full-width ``？`` and ``，`` become ``?`` and ``,``, ligatures are split) and CRLF/CR line ends
become LF.

Words
    A word is a maximal run of Unicode letters or digits, joined across one inner apostrophe or
    hyphen (``don't``, ``well-known``: one word each) and, between digits, across ``.``, ``,`` or
    ``:`` (``3.14``, ``10,000``, ``9:15``: one word each). Markdown markup, punctuation and emoji
    are not words; the words inside code blocks are. Dotted initials (``e.g.``, ``U.S.``) are one
    word. Scripts written without spaces (Chinese,
    Japanese) count each unbroken run of characters as one word.

Sentences
    The text is cut into blocks the way markdown reads it: a blank line, a heading, a list item, a
    quote line, a table row and a fenced code block each start a new block, and the other lines of
    a paragraph are joined (a soft line break does not end a sentence). A non-empty code block
    counts as one sentence. Inside a block a sentence ends at a run of ``.``, ``!``, ``?``,
    ``…`` (plus closing quotes or brackets) that is followed by whitespace or the end of the
    block, or at ``。`` (no space needed), except after a known abbreviation (``e.g.``,
    ``etc.``, ``vs.``, ``Dr.``, ``Mr.``, ...). A piece counts as a sentence only if it holds a
    word, so ``...`` or ``---`` alone is none; the unterminated tail of a block is one.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "normalize_text", "strip_code", "find_words", "count_words", "split_sentences",
    "count_sentences", "nonblank_lines", "plain_line", "bullet_items", "numbered_items",
]

_WORD = re.compile(r"(?:[^\W\d_]\.){2,}|\d+(?:[.,:]\d+)+|[^\W_]+(?:['’\-][^\W_]+)*")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_BLOCK = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_NUM = r"(?:[*_]{1,2})?\d{1,3}[.)](?:[*_]{1,2})?"
_BLOCK_START = re.compile(rf"^\s*(?:#{{1,6}}\s|>|\||[-*+•‣▪◦]\s|{_NUM}\s)")
_HEADING = re.compile(r"^\s*(?:#{1,6}\s|\|)")
_MARKER = re.compile(rf"^\s*(?:#{{1,6}}\s+|>\s*|[-*+•‣▪◦]\s+|{_NUM}\s+)")
_BULLET = re.compile(r"^\s*[-*+•‣▪◦]\s+(?=\S)")
_NUMBERED = re.compile(r"^\s*(?:[*_]{1,2})?(\d{1,3})[.)](?:[*_]{1,2})?\s+(?=\S)")
_RULE_LINE = re.compile(r"^\s*(?:[-*_]\s*){3,}$")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s|$)|[。！？]+[\"'”’»)\]」』]*")
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf dr mr mrs ms st no approx fig al jr sr prof".split())
_EMPHASIS = re.compile(r"[*`~]+|(?<![^\W_])_+|_+(?![^\W_])")
_LEADING_JUNK = re.compile(r"^[\s#>\"'“”‘’«»(\[]+")


def normalize_text(text: str) -> str:
    """NFKC-normalised ``text`` with LF line ends; ValueError unless ``text`` is a str."""
    if not isinstance(text, str):
        raise ValueError(f"expected the response as a str, got {type(text).__name__}")
    return unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")


def strip_code(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (normalised first)."""
    return _INLINE_CODE.sub(" ", _CODE_BLOCK.sub("\n", normalize_text(text)))


def find_words(text: str) -> list[str]:
    """The words of ``text`` in order (see the module docstring for what a word is)."""
    return _WORD.findall(normalize_text(text))


def count_words(text: str) -> int:
    """Number of words in ``text`` (0 for empty or punctuation-only text)."""
    return len(find_words(text))


def _blocks(text: str) -> list[str]:
    """Markdown blocks: list items, headings, quote lines, paragraphs; a code block as one."""
    blocks: list[str] = []
    current: list[str] = []
    in_code = False

    def flush() -> None:
        if current:
            blocks.append(" ".join(current))
            current.clear()

    for line in normalize_text(text).split("\n"):
        if _FENCE.match(line):
            flush()
            if in_code:
                blocks.append("code block.")
            in_code = not in_code
            continue
        if in_code:
            continue
        if not line.strip() or _RULE_LINE.match(line):
            flush()
            continue
        if _BLOCK_START.match(line):
            flush()
        current.append(_MARKER.sub("", line).strip())
        if _HEADING.match(line):     # a heading or a table row is a block of its own
            flush()
    if in_code:                      # an unclosed fence (a truncated answer) still counts once
        blocks.append("code block.")
    flush()
    return blocks


def _split_block(block: str) -> list[str]:
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(block):
        before = block[start:m.start()].split()
        last = before[-1].lower().strip("\"'(“‘") if before else ""
        if m.group().startswith(".") and last in _ABBREVIATIONS:
            continue
        pieces.append(block[start:m.end()].strip())
        start = m.end()
    pieces.append(block[start:].strip())
    return [p for p in pieces if _WORD.search(p)]


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` in order (see the module docstring for the rules)."""
    return [s for block in _blocks(text) for s in _split_block(block)]


def count_sentences(text: str) -> int:
    """Number of sentences in ``text`` (0 when it holds no word)."""
    return len(split_sentences(text))


def nonblank_lines(text: str) -> list[str]:
    """The lines of ``text`` that hold anything but whitespace, right-stripped."""
    return [line.rstrip() for line in normalize_text(text).split("\n") if line.strip()]


def plain_line(line: str) -> str:
    """One line without markdown emphasis/code marks and without leading ``#``, ``>`` or quotes."""
    return _LEADING_JUNK.sub("", _EMPHASIS.sub("", normalize_text(line))).strip()


def bullet_items(text: str) -> list[str]:
    """Contents of the bullet lines (``-``, ``*``, ``+``, ``•`` ... then a space), code excluded."""
    return [_BULLET.sub("", line).strip() for line in nonblank_lines(strip_code(text))
            if _BULLET.match(line) and not _RULE_LINE.match(line)]


def numbered_items(text: str) -> list[int]:
    """The numbers of the numbered-list lines (``1.``, ``2)``, ``**3.**``), code excluded."""
    out = []
    for line in nonblank_lines(strip_code(text)):
        m = _NUMBERED.match(line)
        if m:
            out.append(int(m.group(1)))
    return out

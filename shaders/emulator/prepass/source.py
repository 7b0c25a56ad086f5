"""Preprocessed Metal source as tokens, with the edits the pre-pass makes to it.

Edits replace spans of the original text and never add or remove newlines, so clang's
diagnostics keep pointing at the user's lines; `Lines` maps offsets back through the
preprocessor's line markers for the pre-pass's own errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<pp>(?<![^\n])[ \t]*\#[^\n]*)
  | (?P<ws>[ \t\r\f\v]+|\n)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
  | (?P<number>\.?\d(?:[eEpP][+-]|[\w.])*)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<attr_open>\[\[)
  | (?P<punct>::|->|<<=|>>=|<=|>=|==|!=|&&|\|\||\+\+|--|[-+*/%&|^]=|[-+*/%&|^!~<>=?:;,.(){}\[\]])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass
class Token:
    kind: str
    text: str
    start: int
    end: int


class Lines:
    """Maps offsets in preprocessed text back to the user's line numbers."""

    def __init__(self, text: str):
        self.marks: list[tuple[int, int]] = []  # (offset of line after marker, line number)
        for m in re.finditer(r"^[ \t]*#\s*(?:line\s+)?(\d+)[^\n]*\n", text, re.M):
            self.marks.append((m.end(), int(m.group(1))))
        self.text = text

    def line(self, pos: int) -> int:
        base_off, base_line = 0, 1
        for off, ln in self.marks:
            if off > pos:
                break
            base_off, base_line = off, ln
        return base_line + self.text.count("\n", base_off, pos)


def tokenize(text: str) -> list[Token]:
    """Tokens of the text, without whitespace, comments and preprocessor lines."""
    tokens = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            tokens.append(Token("other", text[pos], pos, pos + 1))
            pos += 1
            continue
        kind = m.lastgroup
        if kind not in ("ws", "comment", "pp"):
            tokens.append(Token(kind, m.group(), m.start(), m.end()))
        pos = m.end()
    return tokens


class Source:
    """The token stream of one preprocessed source and the edits passes make to it."""

    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.toks = tokenize(text)
        self.lines = Lines(text)
        self.edits: list[tuple[int, int, str]] = []

    def error(self, tok_or_pos, message: str) -> SyntaxError:
        pos = tok_or_pos.start if isinstance(tok_or_pos, Token) else tok_or_pos
        line = self.lines.line(pos)
        err = SyntaxError(f"{self.filename}:{line}: error: {message}")
        err.lineno = line
        return err

    def replace(self, start: int, end: int, new: str) -> None:
        newlines = self.text.count("\n", start, end)
        self.edits.append((start, end, new.replace("\n", " ") + "\n" * newlines))

    def blank(self, start: int, end: int) -> None:
        self.replace(start, end, "")

    def match_close(self, i: int, open_: str, close: str) -> int:
        depth = 0
        for j in range(i, len(self.toks)):
            t = self.toks[j].text
            if t == open_ or (open_ == "[[" and self.toks[j].kind == "attr_open"):
                depth += 1
            elif t == close:
                depth -= 1
                if depth == 0:
                    return j
        raise self.error(self.toks[i], f"unbalanced '{open_}'")

    def statement_start(self, k: int) -> int:
        """Index of the first token of the statement holding token k (after `;`, `{` or `}`)."""
        while k > 0 and self.toks[k - 1].text not in (";", "{", "}"):
            k -= 1
        return k

    def match_open(self, j: int, open_: str, close: str) -> int:
        depth = 0
        for k in range(j, -1, -1):
            t = self.toks[k].text
            if t == close:
                depth += 1
            elif t == open_:
                depth -= 1
                if depth == 0:
                    return k
        raise self.error(self.toks[j], f"unbalanced '{close}'")

    def attr_end(self, i: int) -> int:
        """Index of the second ']' closing the attribute opened at token i."""
        depth = 0
        for j in range(i + 1, len(self.toks)):
            t = self.toks[j].text
            if t in ("(", "["):
                depth += 1
            elif t in (")",) or (t == "]" and depth > 0):
                depth -= 1
            elif t == "]" and depth == 0 and j + 1 < len(self.toks) and self.toks[j + 1].text == "]":
                return j + 1
        raise self.error(self.toks[i], "unterminated attribute '[['")

    def attr_text(self, i: int, j: int) -> str:
        return self.text[self.toks[i].end : self.toks[j - 1].start].strip()

    def angle_close(self, i: int) -> int:
        depth = 0
        for j in range(i, len(self.toks)):
            t = self.toks[j].text
            if t in ("<",):
                depth += 1
            elif t == ">":
                depth -= 1
                if depth == 0:
                    return j
            elif t == ">>":
                depth -= 2
                if depth <= 0:
                    return j
            elif t in (";", "{", "}"):
                break
        raise self.error(self.toks[i], "unbalanced '<' in template arguments")

    def span(self, i: int, j: int) -> str:
        """Source text of tokens i..j inclusive."""
        return self.text[self.toks[i].start : self.toks[j].end]

    def top_level(self, idxs: list[int]) -> set[int]:
        """The tokens among `idxs` outside any (), [], {} or <> nesting."""
        outer, depth = set(), 0
        for d in idxs:
            text = self.toks[d].text
            if text in (">", ")", "]", "}"):
                depth -= 1
            if depth == 0 and text not in ("<", "(", "[", "{"):
                outer.add(d)
            if text in ("<", "(", "[", "{"):
                depth += 1
        return outer

    def edited_span(self, start: int, end: int) -> str:
        """Text offsets [start, end) with the edits made inside them so far applied."""
        out = []
        pos = start
        for a, b, new in sorted(self.edits, key=lambda e: (e[0], -e[1])):
            if a < pos or b > end or (a == b == end):
                continue
            out.append(self.text[pos:a])
            out.append(new)
            pos = b
        out.append(self.text[pos:end])
        return "".join(out)

    def edited(self) -> str:
        """The text with every edit applied; an edit nested in a span already replaced is dropped."""
        out = []
        pos = 0
        for start, end, new in sorted(self.edits, key=lambda e: (e[0], -e[1])):
            if start < pos:
                continue
            out.append(self.text[pos:start])
            out.append(new)
            pos = end
        out.append(self.text[pos:])
        return "".join(out)


class Pass:
    """A pass over a Source: reads its tokens and records edits through it."""

    def __init__(self, src: Source):
        self.src = src
        self.text = src.text
        self.toks = src.toks
        self.error = src.error
        self.replace = src.replace
        self.blank = src.blank
        self.match_close = src.match_close
        self.match_open = src.match_open
        self.statement_start = src.statement_start
        self.attr_end = src.attr_end
        self.attr_text = src.attr_text
        self.angle_close = src.angle_close
        self.span = src.span
        self.top_level = src.top_level

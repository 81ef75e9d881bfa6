"""User text in Markdown: report.md shows target regexes, model names and error messages as written."""

from __future__ import annotations

import re


def escape(text) -> str:
    """User text (target regexes, model names, error messages) as literal Markdown: every character
    that GitHub Markdown could read as syntax (emphasis, links, HTML, table cells, math) escaped; an
    ``_`` inside a word (``min_delta``) is no emphasis and stays as it is."""
    return re.sub(r"([\\`*\[\]<>|~$&#]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))", r"\\\1", str(text))


def code(text) -> str:
    """``text`` as one inline code span, whatever backticks it holds (CommonMark: a longer fence, and
    a space inside it when the text starts or ends with a backtick)."""
    text = str(text)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"

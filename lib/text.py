"""Words for people: user text made safe to show, readable labels, counts, durations and sizes.

One Markdown escaper serves Streamlit and the Markdown report (CommonMark lets any ASCII punctuation
be backslash-escaped; Streamlit adds :colour[...] directives, :emoji: codes and $math$, so ':' and
'$' are escaped too). One formula neutralizer serves every CSV the app writes.
"""

from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&\"'=^])")
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def md_escape(text: object) -> str:
    """Escape text so Markdown (st.markdown, captions, report.md) shows it literally: no links,
    images, HTML or line breaks."""
    s = re.sub(r"[\r\n\t]+", " ", str(text))
    return _MD_SPECIAL.sub(r"\\\1", s)


def readable_label(name: str) -> str:
    """Class folder name to a label for people: "bean_rust" -> "Bean rust", "cats" -> "Cats"."""
    words = re.sub(r"[_\-]+", " ", str(name)).strip()
    words = re.sub(r"\s+", " ", words)
    if not words:
        return str(name)
    return words[0].upper() + words[1:]


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def duration(seconds: float | None) -> str:
    """'45 s', '3 min 05 s', '2 h 05 min'; '–' when unknown."""
    if seconds is None:
        return "–"
    s = max(0, int(round(float(seconds))))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def clock(seconds: float | None) -> str:
    """m:ss (or XhYYm) for a progress line; --:-- when unknown."""
    if seconds is None:
        return "--:--"
    s = max(0, int(round(float(seconds))))
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def size_text(n: float) -> str:
    """Bytes in words: '1.2 GB', '340.0 KB', '12 bytes'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n):,} bytes"


def csv_safe(value: object) -> object:
    """Neutralize a spreadsheet formula in user text (a file named "=HYPERLINK(...)"): prefix a quote."""
    if isinstance(value, str) and value.startswith(_CSV_FORMULA_START):
        return "'" + value
    return value


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line of text (or its type name), shortened for a status or a log."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]

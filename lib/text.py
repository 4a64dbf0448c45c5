"""Words for people: user text made safe to show, readable labels, counts, durations and sizes.

One Markdown escaper serves Streamlit and the Markdown report (CommonMark lets any ASCII punctuation
be backslash-escaped; Streamlit adds :colour[...] directives, :emoji: codes and $math$, so ':' and
'$' are escaped too). One HTML escaper serves Plotly labels and hover text. One formula neutralizer
(with CSV_LINE_END, which gets a cell holding a line break quoted) serves every CSV the app writes.
`strip_paths` takes this server's folders out of text that leaves it.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Sequence

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&\"'=^])")
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# The line end of every CSV the app writes. Python's csv module quotes a cell that holds a character
# of its line terminator: with "\n" a lone carriage return goes out unquoted, spreadsheets end the
# row there, and a file named "\r=HYPERLINK(...)" puts a live formula at the start of a row of its
# own (csv_safe only sees the start of the cell). With "\r\n" such a cell is quoted.
CSV_LINE_END = "\r\n"
# An absolute path's folders (not a URL's, not a relative path's): "/srv/app/lib/x.py" -> "x.py".
_PATH_CHARS = r"[^\s/'\"<>:,;()\[\]{}|`]"
_ABS_FOLDERS = re.compile(rf"(?<![\w.:/~<>\\-])/(?:{_PATH_CHARS}+/)+")


def md_escape(text: object) -> str:
    """Escape text so Markdown (st.markdown, captions, report.md) shows it literally: no links,
    images, HTML or line breaks."""
    s = re.sub(r"[\r\n\t]+", " ", str(text))
    return _MD_SPECIAL.sub(r"\\\1", s)


def plot_escape(text: object) -> str:
    """Escape text for Plotly labels, tick texts and hover text, which render a subset of HTML
    (<a href>, <span style>, <b>, <br>) and fill in %{...} placeholders: user text shows literally."""
    s = html.escape(re.sub(r"[\r\n\t]+", " ", str(text)), quote=False)  # Plotly knows no &quot;
    return s.replace("%", "&#37;").replace("{", "&#123;").replace("}", "&#125;")


def readable_label(name: str) -> str:
    """Class folder name to a label for people: "bean_rust" -> "Bean rust", "cats" -> "Cats"."""
    words = re.sub(r"[_\-]+", " ", str(name)).strip()
    words = re.sub(r"\s+", " ", words)
    if not words:
        return str(name)
    return words[0].upper() + words[1:]


def readable_labels(classes: Iterable[str]) -> dict[str, str]:
    """Labels for a set of classes, distinct even when readable_label makes two the same
    ("cats"/"Cats", "bean_rust"/"bean-rust"): those show their folder names, "Bean rust (bean_rust)"."""
    names = [str(c) for c in classes]
    plain = {c: readable_label(c) for c in names}
    seen: dict[str, int] = {}
    for label in plain.values():
        seen[label.casefold()] = seen.get(label.casefold(), 0) + 1
    labels = {c: f"{plain[c]} ({c})" if seen[plain[c].casefold()] > 1 else plain[c] for c in names}
    if len(set(labels.values())) < len(labels):  # a folder named like another's label: names as typed
        return {c: c for c in names}
    return labels


def one_line(text: object) -> str:
    """Text for one line of terminal output: control characters (newlines, carriage returns, escape
    sequences, bidi overrides) shown as \\xNN / \\uNNNN, so a file name can't fake or rewrite a line."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


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


def strip_paths(text: str, known: Sequence[tuple[str, str]], *, others: bool = True) -> str:
    """Text without this server's folders: each known folder becomes its replacement (a dataset its
    folder name, the app's own folder nothing) and, with `others`, any other absolute path keeps
    only its last part. For what leaves a hosted server (logs, configs, reports)."""
    for prefix, repl in sorted(known, key=lambda kv: -len(kv[0])):
        prefix = prefix.rstrip("/")
        if not prefix:
            continue

        def swap(m: re.Match[str], repl: str = repl) -> str:
            if repl:
                return repl + m.group(1)
            return "" if m.group(1) else "."

        text = re.sub(re.escape(prefix) + r"(/|(?![\w-]|\.[\w-]))", swap, text)  # "…beans." ends a sentence
    return _ABS_FOLDERS.sub("", text) if others else text

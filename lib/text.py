"""Making user text (file names, class names, notes) safe to show, and readable labels."""

from __future__ import annotations

import re

# CommonMark lets any ASCII punctuation be backslash-escaped; Streamlit adds :colour[...] directives,
# :emoji: short codes and $math$, so ':' and '$' are escaped too.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&\"'=^])")


def md_escape(text: object) -> str:
    """Escape text so st.markdown/st.caption/st.image captions show it literally (no links, images, HTML)."""
    s = str(text).replace("\r", " ").replace("\n", " ")
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

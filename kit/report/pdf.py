"""The report's PDF: WeasyPrint on the same HTML, with the CJK font embedded, a bold that shows in Japanese, and no
character the font cannot draw.

- **Bold in Japanese.** IPAexGothic (the font japanize-matplotlib ships) has no bold face, and WeasyPrint embeds the
  font's own outlines, so ``font-weight: bold`` changed nothing in the Japanese PDF. While the PDF is drawn with such a
  font, bold text is drawn with PDF text render mode 2 (fill, then stroke its outline in the text colour, width
  ``FAKE_BOLD_EM`` of the font size): the synthetic bold every PDF viewer shows.
- **Numbers stay with their units.** ``keep_units_together`` joins a number and its unit (``97.7 %``, ``12.65 ms``,
  ``3.8 px``, ``n = 132``) with no-break spaces in the page's text, so a line never ends between them.
- **Every glyph printed.** ``fit_to_font`` replaces characters the font lacks by the ones a Japanese page uses for them
  (IPAexGothic has ≦ ≧, not ≤ ≥); ``missing_glyphs`` lists what is still missing (a test keeps it empty).
"""

from __future__ import annotations

import contextlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from kit.io import write_atomic
from kit.errors import ArgumentError

FAKE_BOLD_EM = 0.03
BOLD_WEIGHT = 600
# a character the font lacks -> the one printed instead (the Japanese typographic convention)
FALLBACKS = {"≤": "≦", "≥": "≧"}


NBSP = "\u00a0"
_UNIT_AFTER_NUMBER = re.compile(r"(?<=\d) (?=(?:%|ms|px|ppm|pts|h|MB|EUR|USD|JPY|GBP|CHF|°|grey levels|階調)(?![A-Za-z]))")
_N_EQUALS = re.compile(r"\bn = (?=\d)")
_TAG = re.compile(r"(<[^>]+>)")


def keep_units_together(html: str) -> str:
    """No-break spaces between a number and its unit, and in ``n = 132``, in the text of ``<body>`` (never inside a tag,
    an attribute or the style sheet)."""
    start = html.find("<body")
    if start < 0:
        return html
    start = html.index(">", start) + 1
    parts = _TAG.split(html[start:])
    for i in range(0, len(parts), 2):  # even items: text between tags
        parts[i] = _N_EQUALS.sub(f"n{NBSP}={NBSP}", _UNIT_AFTER_NUMBER.sub(NBSP, parts[i]))
    return html[:start] + "".join(parts)


@lru_cache(maxsize=4)
def _codepoints(font_file: Path) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    return frozenset(TTFont(str(font_file), lazy=True).getBestCmap())


def fit_to_font(text: str, font_file: Path) -> str:
    """``text`` with each character ``font_file`` cannot draw replaced by its ``FALLBACKS`` entry (when the font has it)."""
    cmap = _codepoints(font_file)
    for missing, instead in FALLBACKS.items():
        if ord(missing) not in cmap and ord(instead) in cmap:
            text = text.replace(missing, instead)
    return text


def missing_glyphs(text: str, font_file: Path) -> set[str]:
    """The printable characters of ``text`` that ``font_file`` has no glyph for."""
    cmap = _codepoints(font_file)
    return {c for c in set(text) if c.isprintable() and not c.isspace() and ord(c) not in cmap}


@contextlib.contextmanager
def fake_bold() -> Iterator[None]:
    """While active, WeasyPrint strokes bold text (render mode 2) so a font without a bold face still prints bold."""
    from weasyprint.draw import text as draw_text_module

    original = draw_text_module.draw_first_line

    def draw_first_line(stream: Any, textbox: Any, *args: Any, **kwargs: Any) -> Any:
        style = textbox.style
        if style["font_weight"] < BOLD_WEIGHT:
            return original(stream, textbox, *args, **kwargs)
        stream.set_color(style["color"], stroke=True)
        stream.set_line_width(FAKE_BOLD_EM * style["font_size"])
        stream.set_text_rendering(2)
        try:
            return original(stream, textbox, *args, **kwargs)
        finally:
            stream.set_text_rendering(0)

    draw_text_module.draw_first_line = draw_first_line
    try:
        yield
    finally:
        draw_text_module.draw_first_line = original


def write_pdf(html: str, path: Path, font_file: Path | None) -> None:
    """``html`` rendered to ``path`` (atomically); ``font_file``: the CJK font to embed (Japanese), else None."""
    try:
        from weasyprint import CSS, HTML
        from weasyprint.text.fonts import FontConfiguration
    except (ImportError, OSError) as exc:  # OSError: the pango/cairo system libraries are missing
        raise ArgumentError("pdf", f"the PDF renderer is not available ({type(exc).__name__}: {exc}); "
                          "pip install 'inspection-kit[report]' (weasyprint; needs the pango system library)") from None
    fonts = FontConfiguration()
    stylesheets = []
    bold = contextlib.nullcontext()
    if font_file is not None:  # the CJK font travels inside the PDF, whatever the reader's machine has
        stylesheets.append(CSS(string=f"@font-face {{ font-family: 'KitCJK'; src: url('{font_file.as_uri()}'); }}"
                                      "body { font-family: 'KitCJK', sans-serif; }", font_config=fonts))
        html, bold = fit_to_font(html, font_file), fake_bold()
    html = keep_units_together(html)
    with bold:
        write_atomic(path, lambda tmp: HTML(string=html).write_pdf(str(tmp), stylesheets=stylesheets, font_config=fonts))

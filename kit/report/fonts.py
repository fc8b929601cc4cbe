"""A Japanese-capable font for charts and the PDF, or a clear error naming what to install."""

from __future__ import annotations

import warnings
from pathlib import Path

from kit.errors import KitError

CJK_FAMILIES = ("Noto Sans CJK JP", "Noto Sans JP", "IPAexGothic", "IPAGothic", "IPAPGothic", "TakaoGothic",
                "Source Han Sans JP", "Source Han Sans", "VL Gothic", "Yu Gothic", "Meiryo", "MS Gothic",
                "Hiragino Sans", "Hiragino Kaku Gothic Pro")
INSTALL_HINT = ("pip install japanize-matplotlib (bundles IPAexGothic; part of the kit's `report` extra) "
                "or install the fonts-noto-cjk system package")


class FontMissing(KitError):
    """No font on this machine can draw Japanese text."""


def cjk_font() -> tuple[str, Path]:
    """(family name, font file) of a CJK font matplotlib can use."""
    from matplotlib import font_manager

    try:  # registers its bundled IPAexGothic with matplotlib
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # it uses distutils' LooseVersion
            import japanize_matplotlib  # noqa: F401
    except ImportError:
        pass
    by_name = {f.name: Path(f.fname) for f in font_manager.fontManager.ttflist}
    for family in CJK_FAMILIES:
        if family in by_name:
            return family, by_name[family]
    raise FontMissing(f"--lang ja: no Japanese-capable font found for charts and PDF; {INSTALL_HINT}")


EMBED_FAMILY = "KitCJK"


def embedded_font_css(font_file: Path, text: str, family: str = EMBED_FAMILY) -> str:
    """An ``@font-face`` rule carrying ``font_file`` subset to the characters of ``text`` (WOFF, base64),
    so the Japanese report reads on a PC without CJK fonts and stays small (a few hundred glyphs, not the
    whole font's several megabytes). fontTools does the subsetting, as every font pipeline does."""
    import base64
    import html
    import io

    from fontTools import subset

    options = subset.Options()
    options.flavor = "woff"  # zlib-compressed; every browser and WeasyPrint read it
    options.layout_features = ["*"]  # keep vertical forms, proportional kana, ...
    options.name_IDs = ["*"]
    options.notdef_outline = True
    font = subset.load_font(str(font_file), options)
    subsetter = subset.Subsetter(options)
    # the characters as printed: an escaped apostrophe (&#39;) or ampersand in the HTML is still a glyph on the page
    subsetter.populate(text="".join(sorted(set(html.unescape(text)))))
    subsetter.subset(font)
    buffer = io.BytesIO()
    subset.save_font(font, buffer, options)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f"@font-face {{ font-family: '{family}'; src: url(data:font/woff;base64,{data}) format('woff'); }}\n"
            f"body {{ font-family: '{family}', sans-serif; }}")

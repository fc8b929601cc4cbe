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

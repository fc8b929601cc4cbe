"""CSV cells a spreadsheet opens as text, never as a formula (CSV or formula injection).

Excel, LibreOffice and Google Sheets run a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula, and
treat a leading tab or carriage return alike: a part id ``=HYPERLINK("http://...", "click")`` sent to the
station landed verbatim in ``queue.csv``, a link or a computation in the reviewer's sheet. As OWASP recommends
(https://owasp.org/www-community/attacks/CSV_Injection), such a cell is written with a single quote in front,
which the spreadsheet shows as text. Every CSV the kit writes for people goes through ``escape_cell``
(``deploy review-queue``'s ``queue.csv``; ``kit.io.write_csv_atomic``: shadow, audit and verify tables).

Numbers (``-0.25``, ``+3``) are left as they are: no spreadsheet runs them and readers parse them. A cell that
already starts with a quote gets one more, so ``unescape_cell`` gives back the exact value (``deploy
review-queue`` reads its own rows back).
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return value == value.strip()


def escape_cell(value: str) -> str:
    """``value`` as a cell a spreadsheet shows as text."""
    if value.startswith("'") or (value.startswith(FORMULA_STARTS) and not _is_number(value)):
        return "'" + value
    return value


def unescape_cell(value: str) -> str:
    """The value ``escape_cell`` was given."""
    return value[1:] if value.startswith("'") else value

"""The benchmark table: one component rendered as sortable HTML, Markdown or CSV.

Rows are plain dicts. A column's unit comes from its key and is named in its header, one unit per column:
``*_bytes`` is shown in GiB (2**30 bytes), ``*_pct`` in %, ``*_s`` in seconds; ``peak_allocated_bytes`` is
headed ``peak allocated (GiB)``. Keys starting with ``_`` are not shown (``_href`` links the first cell).
The HTML table sorts on the saved values (``data-sort``), not on the rounded text.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from ..units import GiB
from .views import is_number

Kind = Literal["bytes", "pct", "s", "num", "text"]

#: key suffix -> (kind, unit named in the header)
_SUFFIXES: tuple[tuple[str, Kind, str], ...] = (("_bytes", "bytes", "GiB"), ("_pct", "pct", "%"), ("_s", "s", "s"))


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    kind: Kind

    @property
    def numeric(self) -> bool:
        return self.kind != "text"


#: words written as acronyms in headers
_ACRONYMS = {"gpu": "GPU", "rss": "RSS", "nvml": "NVML", "cuda": "CUDA", "lora": "LoRA", "oom": "OOM", "kv": "KV"}


def _words(stem: str) -> str:
    return " ".join(_ACRONYMS.get(w, w) for w in stem.split("_") if w)


def column_for(key: str, values: list[Any]) -> Column:
    """The column of ``key``: its header (with its unit) and kind, from the suffix or else the values."""
    for suffix, kind, unit in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return Column(key, f"{_words(key[:-len(suffix)])} ({unit})", kind)
    present = [v for v in values if v is not None]
    kind: Kind = "num" if present and all(is_number(v) for v in present) else "text"
    return Column(key, _words(key) or key, kind)


def columns_of(rows: list[dict[str, Any]]) -> list[Column]:
    """Columns in first-seen key order over all rows, hidden ``_`` keys left out."""
    keys: dict[str, None] = {}
    for row in rows:
        for key in row:
            if not str(key).startswith("_"):
                keys.setdefault(str(key), None)
    return [column_for(k, [r.get(k) for r in rows]) for k in keys]


def cell_text(value: Any, kind: Kind, *, csv_digits: bool = False) -> str:
    """Render one value in its column's unit; ``csv_digits`` gives one more digit and no separators."""
    if value is None:
        return "" if csv_digits else "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "bytes" and is_number(value):
        return f"{value / GiB:.3f}" if csv_digits else f"{value / GiB:,.2f}"
    if kind == "pct" and is_number(value):
        return f"{value:.2f}" if csv_digits else f"{value:+.1f}"
    if kind == "s" and is_number(value):
        return f"{value:.2f}" if csv_digits else f"{value:,.1f}"
    if is_number(value):
        if isinstance(value, int):
            return str(value) if csv_digits else f"{value:,}"
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def sort_value(value: Any, column: Column) -> str:
    """The ``data-sort`` attribute: the saved number, or the text; empty for missing (sorted last)."""
    if value is None:
        return ""
    if column.numeric and is_number(value):
        return repr(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return cell_text(value, column.kind)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned."""
    cols = columns_of(rows)
    if not cols:
        return ""

    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c.header) for c in cols) + " |",
             "|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(esc(cell_text(row.get(c.key), c.kind)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV with a header row; sizes in GiB to 3 decimals, empty cells for missing values."""
    cols = columns_of(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.header for c in cols])
    for row in rows:
        writer.writerow([cell_text(row.get(c.key), c.kind, csv_digits=True) for c in cols])
    return buf.getvalue()


def _css_name(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-") or "x"


def to_html(rows: list[dict[str, Any]], table_id: str) -> str:
    """A ``<table class="sortable">``; :data:`SORT_JS` makes its headers sort on click."""
    cols = columns_of(rows)
    e = html.escape
    out = [f'<table class="sortable" id="{e(table_id)}">', "<thead><tr>"]
    for c in cols:
        out.append(f'<th data-type="{"num" if c.numeric else "text"}" aria-sort="none">'
                   f'<button type="button">{e(c.header)}</button></th>')
    out.append("</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = []
        for i, c in enumerate(cols):
            value = row.get(c.key)
            text = e(cell_text(value, c.kind))
            if i == 0 and isinstance(row.get("_href"), str):
                text = f'<a href="{e(row["_href"])}">{text}</a>'
            cls = f"col-{_css_name(c.key)}" + (" num" if c.numeric else "")
            cells.append(f'<td class="{cls}" data-sort="{e(sort_value(value, c))}">{text}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


#: Click a header to sort by it (again to reverse); numbers by value, missing cells last.
SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.querySelectorAll('th');
  heads.forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      heads.forEach(function (h) { h.setAttribute('aria-sort', 'none'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var num = th.dataset.type === 'num', body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
        if (x === '' || y === '') { return (x === '') - (y === ''); }
        var c = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

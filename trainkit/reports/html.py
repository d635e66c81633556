"""HTML assembly: one self-contained page, plotly.js inlined once, no network at view time.

Figures are written with `plotly.io.to_html(include_plotlyjs=False)` after plotly.js itself has
been inlined in <head>, so a report of many charts carries the library once: plotly.js's basic
bundle (scatter, bar and pie: every trace the reports draw; 1.2 MB, vendored from npm's
plotly.js-basic-dist-min at the version plotly.py ships), or the whole 4.8 MB library when a chart
draws another trace or plotly.py's own plotly.js is of another version. Blocks carry
`data-model`, `data-hardware` and (rows) `data-precision` attributes; a few lines of script hide
what the filters exclude, and read/write the filters in the URL fragment (#model=gpt&precision=fp32)
so a link can point at a filtered view.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from trainkit.engine.spec.schema import write_text

from .records import InputError

if TYPE_CHECKING:  # the comparison page uses this module without pandas or plotly
    import pandas as pd

    from .figures import Chart

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; }
header { padding: 16px 28px 8px; border-bottom: 1px solid #ddd; background: #fff;
         position: sticky; top: 0; z-index: 10; }
header h1 { font-size: 20px; margin: 0 0 4px; }
main { padding: 8px 28px 40px; max-width: 1500px; }
nav a { margin-right: 14px; }
h2 { margin-top: 36px; border-bottom: 2px solid #eee; padding-bottom: 4px; }
h3 { margin: 22px 0 4px; font-size: 15px; }
summary h3 { display: inline-block; cursor: pointer; }
summary h3 .note { font-weight: normal; }
.note { color: #555; margin: 2px 0 8px; }
.warn { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 8px 12px; }
.bad { background: #fdecea; border-left: 4px solid #c44e52; padding: 8px 12px; }
.filters label { margin-right: 16px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 9px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th { background: #f6f6f6; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
td.wrap { white-space: normal; min-width: 240px; max-width: 520px; }
tr.status-failed td, td.v-regressed, td.v-failed { background: #fdecea; }
tr.status-mismatch td { background: #fff3cd; }
td.v-improved, td.v-fixed { background: #e9f5ec; }
td.v-noisy, td.suspect { background: #fff4e5; }
.chart { min-height: 200px; }
.wide { overflow-x: auto; }
table.compact th { white-space: normal; vertical-align: bottom; }
table.compact th, table.compact td { padding: 3px 6px; }
tr.row-note td { white-space: normal; padding: 0 9px 5px 24px; font-size: 13px; }
tr:has(+ tr.row-note) td { border-bottom: none; }
.flag { color: #a8322d; }
details.ops summary { cursor: pointer; }
details.ops ol { margin: 2px 0 4px; padding-left: 22px; columns: 2; }
code { font-size: 12px; }
"""

FILTER_JS = """
function tkFilters() {
  const value = id => { const el = document.getElementById(id); return el ? el.value : '*'; };
  const want = { model: value('f-model'), hardware: value('f-hardware'), precision: value('f-precision') };
  for (const el of document.querySelectorAll('[data-model],[data-hardware],[data-precision]')) {
    el.hidden = !Object.entries(want).every(([k, v]) => v === '*' || !(k in el.dataset) || el.dataset[k] === v);
  }
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    const shown = t => want.precision === '*' || !t.meta || t.meta === want.precision;
    Plotly.restyle(plot, { visible: plot.data.map(shown) });
    const axis = plot.layout.yaxis;
    if (axis && axis.categoryorder === 'array') {  // bars per cell: drop the rows of hidden cells
      plot.tkCategories = plot.tkCategories || axis.categoryarray.slice();
      const used = new Set(plot.data.filter(shown).flatMap(t => t.y || []));
      Plotly.relayout(plot, { 'yaxis.categoryarray': plot.tkCategories.filter(c => used.has(c)) });
    }
    if (plot.offsetParent !== null) Plotly.Plots.resize(plot);  // drawn while hidden, it has no size yet
  }
  const hash = Object.entries(want).filter(([, v]) => v !== '*').map(([k, v]) => k + '=' + encodeURIComponent(v));
  history.replaceState(null, '', hash.length ? '#' + hash.join('&') : location.pathname + location.search);
}
window.addEventListener('DOMContentLoaded', () => {
  for (const part of location.hash.slice(1).split('&').filter(Boolean)) {
    const [k, v] = part.split('=');
    const el = document.getElementById('f-' + k);
    if (el && [...el.options].some(o => o.value === decodeURIComponent(v))) el.value = decodeURIComponent(v);
  }
  for (const el of document.querySelectorAll('.filters select')) el.addEventListener('change', tkFilters);
  if (location.hash.length > 1) tkFilters();
});
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def attrs(values: Mapping[str, object]) -> str:
    return "".join(f' data-{k}="{esc(v)}"' for k, v in values.items() if v is not None)


def table(columns: list[str], rows: list[list[str]], text_columns: Iterable[str] = (),
          wrap_columns: Iterable[str] = (), row_attrs: list[dict[str, object]] | None = None,
          row_classes: list[str] | None = None, cell_classes: Mapping[str, list[str]] | None = None,
          raw_columns: Iterable[str] = (), row_notes: list[str] | None = None, css_class: str = "") -> str:
    """An HTML table of display strings: text columns align left, numbers right, wrap columns
    (long reasons and notes) break lines. cell_classes gives, per column, one CSS class per row
    (e.g. the colour of a verdict). Values are escaped, except in raw_columns, whose values are
    HTML the caller built (links, a folded list) and escaped itself. A non-empty row note is a
    line of HTML (escaped by the caller) under its row, across the whole table, with the row's
    attributes so that a filter hides both."""
    text_columns, wrap_columns, raw_columns = set(text_columns), set(wrap_columns), set(raw_columns)
    head = "".join(f'<th class="text">{esc(c)}</th>' if c in text_columns else f"<th>{esc(c)}</th>"
                   for c in columns)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for column, value in zip(columns, row):
            classes = " ".join(filter(None, ["text" if column in text_columns else "",
                                             "wrap" if column in wrap_columns else "",
                                             (cell_classes or {}).get(column, [""] * len(rows))[i]]))
            shown = value if column in raw_columns else esc(value)
            cells.append(f'<td class="{classes}">{shown}</td>' if classes else f"<td>{shown}</td>")
        row_class = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        row_attr = attrs(row_attrs[i]) if row_attrs else ""
        body.append(f"<tr{row_class}{row_attr}>{''.join(cells)}</tr>")
        if row_notes and row_notes[i]:
            body.append(f'<tr class="row-note"{row_attr}><td class="text" colspan="{len(columns)}">'
                        f"{row_notes[i]}</td></tr>")
    table_class = f' class="{esc(css_class)}"' if css_class else ""
    return f"<table{table_class}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def frame_table(frame: pd.DataFrame, **options: Any) -> str:
    """table() of a frame of display strings."""
    return table([str(c) for c in frame.columns], frame.astype(str).values.tolist(), **options)


def chart(c: Chart, div_id: str) -> str:
    """A chart's note and figure (or only the note when there is nothing to draw)."""
    import plotly.io as pio  # here, not at the top: the comparison page draws no chart

    note = f'<p class="note">{esc(c.note)}</p>' if c.note else ""
    if c.figure is None:
        return note
    figure = pio.to_html(c.figure, full_html=False, include_plotlyjs=False, div_id=div_id,
                         config={"displaylogo": False, "responsive": True})
    full = "" if {trace.type for trace in c.figure.data} <= BASIC_TRACES else NEEDS_FULL_PLOTLY
    return f'{note}<div class="chart">{full}{figure}</div>'


def select(name: str, label: str, values: list[str]) -> str:
    if len(values) < 2:
        return ""
    options = '<option value="*">all</option>' + "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
    return f'<label>{esc(label)} <select id="f-{name}">{options}</select></label>'


BASIC_BUNDLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor", "plotly-basic.min.js")
BASIC_TRACES = frozenset({"scatter", "bar", "pie"})
"""The traces plotly.js's basic bundle draws."""
NEEDS_FULL_PLOTLY = "<!-- needs the whole plotly.js -->"


def plotly_script(body: str) -> str:
    """plotly.js for a page: the basic bundle when every chart of `body` draws only its traces and
    it is the version plotly.py writes figures for, else the whole library."""
    import plotly.offline  # plotly: only for a page that draws charts (the comparison page draws none)

    version = plotly.offline.get_plotlyjs_version()
    if NEEDS_FULL_PLOTLY not in body and os.path.isfile(BASIC_BUNDLE):
        with open(BASIC_BUNDLE, encoding="utf-8") as f:
            basic = f.read()
        if f"(basic - minified) v{version}\n" in basic[:200]:
            return f'<script type="text/javascript">{basic}</script>'
    return f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'


def page(title: str, header: str, body: str, with_plotly: bool = True) -> str:
    """The whole document; plotly.js (plotly_script) inlined once in <head> when the page has charts."""
    plotly_js = plotly_script(body) if with_plotly else ""

    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style>{plotly_js}"
            f"<script>{FILTER_JS}</script></head>"
            f"<body><header><h1>{esc(title)}</h1>{header}</header><main>{body}</main></body></html>\n")


def write_page(output_html: str, page_html: str, markdown: str, csv: str, what: str) -> dict[str, str]:
    """Write a page and, beside it with the same stem, its Markdown and CSV, each atomically.
    Returns the paths written; an output that cannot be written is InputError (bad input)."""
    stem = os.path.splitext(output_html)[0]
    paths = {"html": output_html, "csv": stem + ".csv", "markdown": stem + ".md"}
    try:
        for key, text in (("html", page_html), ("csv", csv), ("markdown", markdown)):
            write_text(paths[key], text)
    except OSError as e:
        raise InputError(f"{output_html}: cannot write the {what}: {e.strerror or e}") from None
    return paths

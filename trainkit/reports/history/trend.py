"""The trend page: one self-contained HTML file, one chart per series (a cell on one environment),
a row per metric (throughput, headline memory, final loss), night by night.

On each row: the nightly values (hover: date, commit, records; a click opens that night's report
when ingest was given --report-url), the segment means between change points, a noise band (the
segment mean ± 2 x the series' robust relative noise; the exact rule's metrics have none), each
change point as a dashed line between the nights with its magnitude, p-value and commit range, and
the detector's parameters. Above the charts: the change points as a table with links to their
charts, and filters (model, precision, hardware, "changed only", "most unstable first").
"""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from trainkit.engine.spec.schema import write_text

from .. import html
from .changes import History, change_rows
from .detect import Analysis
from .series import EXACT, UNITS, Series, noise_text, percent

COLORS = {"throughput": "#4c72b0", "memory": "#55a868", "loss": "#8172b2"}
CHANGE_COLORS = {"regression": "#c44e52", "improvement": "#2a9d4b", "change": "#dd8452"}
BAND_SIGMAS = 2

TREND_JS = """
function tkTrend() {
  const changedOnly = document.getElementById('f-changed').checked;
  const order = document.getElementById('f-order').value;
  const box = document.getElementById('series');
  const blocks = [...box.children];
  blocks.sort((a, b) => order === 'unstable' ? b.dataset.noise - a.dataset.noise
                        : order === 'change' ? b.dataset.change - a.dataset.change : a.dataset.pos - b.dataset.pos);
  for (const el of blocks) {
    box.appendChild(el);
    el.classList.toggle('off', changedOnly && el.dataset.changed !== '1');
  }
  for (const plot of box.querySelectorAll('.js-plotly-plot')) {
    if (plot.offsetParent !== null) Plotly.Plots.resize(plot);
  }
}
// A link can ask for a view: #only=changed&sort=unstable (or sort=change). Read now: the page's other
// filters rewrite the fragment when the document has loaded.
const tkWanted = new URLSearchParams(location.hash.slice(1));
window.addEventListener('DOMContentLoaded', () => {
  for (const id of ['f-changed', 'f-order']) document.getElementById(id).addEventListener('change', tkTrend);
  document.getElementById('f-changed').checked = tkWanted.get('only') === 'changed';
  const sort = tkWanted.get('sort');
  if (['unstable', 'change'].includes(sort)) document.getElementById('f-order').value = sort;
  tkTrend();
});
"""
# After each plot is drawn: a click on a night opens its report (the point's customdata).
CLICK_JS = ("document.getElementById('{plot_id}').on('plotly_click', d => { const url = d.points[0].customdata; "
            "if (url) window.open(url, '_blank'); });")


def _metric_title(analysis: Analysis) -> str:
    s = analysis.series
    unit = f" ({UNITS[s.metric]})" if UNITS[s.metric] else ""
    noise = "" if s.method == EXACT else f", noise {noise_text(analysis.noise)}"
    return (f"<b>{s.metric}</b>{unit}: {s.measure_name}{noise}<br><span style='font-size:10px'>"
            f"{analysis.params.describe(s.method, s.metric)}</span>")


def _values(fig: go.Figure, analysis: Analysis, history: History, row: int) -> None:
    s = analysis.series
    nights = [history.night(p.run_id) for p in s.points]
    infos = [history.run(p.run_id) for p in s.points]
    hover = [f"night {n}<br>{i.date}<br>commit {(i.commit or '?')[:12]}<br>{p.value:.6g} ({p.n} record(s))"
             + ("<br>click: that night's report" if i.report_url else "")
             for n, i, p in zip(nights, infos, s.points)]
    fig.add_trace(go.Scatter(x=nights, y=s.values, mode="lines+markers", name=s.metric, showlegend=False,
                             line={"color": COLORS[s.metric], "width": 1}, marker={"size": 5},
                             customdata=[i.report_url for i in infos], hovertext=hover, hoverinfo="text"),
                  row=row, col=1)
    for seg in analysis.segments:
        x = [nights[seg.start], nights[seg.stop - 1]]
        if s.method != EXACT and analysis.noise is not None:
            low, high = (seg.mean * (1 - BAND_SIGMAS * analysis.noise), seg.mean * (1 + BAND_SIGMAS * analysis.noise))
            fig.add_trace(go.Scatter(x=[x[0], x[1], x[1], x[0]], y=[low, low, high, high], fill="toself", mode="lines",
                                     fillcolor="rgba(120,120,120,0.12)", line={"width": 0}, hoverinfo="skip",
                                     showlegend=False), row=row, col=1)
        fig.add_trace(go.Scatter(x=x, y=[seg.mean, seg.mean], mode="lines", showlegend=False,
                                 line={"color": "#333", "dash": "dot", "width": 1.5},
                                 hovertext=f"segment mean {seg.mean:.6g} (nights {x[0]}-{x[1]})", hoverinfo="text"),
                      row=row, col=1)


def _changes(fig: go.Figure, analysis: Analysis, history: History, row: int) -> None:
    for point in analysis.change_points:
        x = history.night(point.run_after) - 0.5
        color = "#888" if point.acknowledged else CHANGE_COLORS[point.kind]
        p = "exact rule" if point.p_value is None else f"p={point.p_value:.1e}"
        ack = f"<br>acknowledged: {html.esc(point.acknowledged.why)}" if point.acknowledged else ""
        commits = f"{(point.commit_before or '?')[:8]}..{(point.commit_after or '?')[:8]}"
        text = f"{percent(point.magnitude)} {p}<br>{commits}{ack}"
        fig.add_vline(x=x, line={"color": color, "dash": "dash", "width": 2}, row=row, col=1)
        fig.add_annotation(x=x, y=1, yref="y domain" if row == 1 else f"y{row} domain", xref=f"x{row}" if row > 1
                           else "x", text=text, showarrow=False, xanchor="left", yanchor="top",
                           font={"size": 10, "color": color}, bgcolor="rgba(255,255,255,0.8)")


def figure(analyses: list[Analysis], history: History) -> go.Figure:
    """One series' chart: a row per metric, nights on a shared axis."""
    fig = make_subplots(rows=len(analyses), cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=[_metric_title(a) for a in analyses])
    for row, analysis in enumerate(analyses, 1):
        _values(fig, analysis, history, row)
        _changes(fig, analysis, history, row)
    fig.update_xaxes(title_text="night", row=len(analyses), col=1)
    fig.update_layout(height=230 * len(analyses) + 60, margin={"l": 60, "r": 20, "t": 60, "b": 40},
                      template="plotly_white", hovermode="closest")
    return fig


def _block(series: Series, analyses: list[Analysis], history: History, pos: int) -> str:
    anchor = f"s{pos}"
    changes = [c for a in analyses for c in a.change_points if not c.acknowledged]
    biggest = max((abs(c.magnitude) for c in changes if c.magnitude is not None), default=0.0)
    measured = [a.noise for a in analyses if a.series.method != EXACT and a.noise is not None]
    noise = max(measured, default=None)
    figure_html = pio.to_html(figure(analyses, history), full_html=False, include_plotlyjs=False, div_id=f"plot-{pos}",
                              post_script=CLICK_JS, config={"displaylogo": False, "responsive": True})
    attributes = html.attrs({"model": series.model, "precision": series.precision, "hardware": series.hardware,
                             "changed": int(bool(changes)), "noise": f"{noise or 0.0:.6f}", "change": f"{biggest:.6f}",
                             "pos": pos})
    summary = (f"{len(changes)} change point(s)" if changes else "no change point") + f"; noise {noise_text(noise)}"
    return (f'<section id="{anchor}"{attributes}><h3>{html.esc(series.label)}</h3>'
            f'<p class="note">{html.esc(summary)}</p><div class="chart">{figure_html}</div></section>')


def _night(history: History, night: int) -> str:
    """A night's number, linked to its report when ingest was given one."""
    url = history.runs[night - 1].report_url
    return f'<a href="{html.esc(url)}">{night}</a>' if url else str(night)


def _change_table(history: History, anchors: dict[tuple[str, str], str]) -> str:
    rows = change_rows(history)
    if not rows:
        return '<p class="note">No change point in any series.</p>'
    cells = []
    for r in rows:
        anchor = anchors[(r["cell_id"], repr(sorted(r["fingerprint"].items())))]
        p = "exact rule" if r["p_value"] is None else f"{r['p_value']:.1e}"
        ack = f"acknowledged by {r['acknowledged']['who']}: {r['acknowledged']['why']}" if r["acknowledged"] else ""
        cells.append([f'<a href="#{anchor}">{html.esc(r["series"])}</a>', html.esc(r["metric"]), html.esc(r["kind"]),
                      percent(r["magnitude"]), p, f"{_night(history, r['night_before'])} → "
                                                    f"{_night(history, r['night_after'])}",
                      html.esc(f"{(r['commit_before'] or '?')[:12]}..{(r['commit_after'] or '?')[:12]}"),
                      str(r["nights_after"]),
                      html.esc(ack)])
    columns = ["series", "metric", "kind", "change", "p", "nights", "commits", "nights since", "note"]
    classes = {"regression": "v-regressed", "improvement": "v-improved", "change": "v-noisy"}
    return html.table(columns, cells, text_columns=("series", "metric", "kind", "commits", "note"),
                      raw_columns=columns, cell_classes={"kind": [classes[r["kind"]] for r in rows]})


def _filters(series: list[Series]) -> str:
    selects = "".join(html.select(name, name, sorted({str(getattr(s, name)) for s in series}))
                      for name in ("model", "precision", "hardware"))
    return (f'<p class="filters">{selects}<label><input type="checkbox" id="f-changed"> changed only</label>'
            '<label>order <select id="f-order"><option value="cell">as stored</option>'
            '<option value="unstable">most unstable first</option>'
            '<option value="change">biggest change first</option></select></label></p>')


def render(history: History, title: str) -> str:
    """The whole page."""
    by_series: dict[tuple[str, str], list[Analysis]] = {}
    for analysis in history.analyses:
        s = analysis.series
        by_series.setdefault((s.cell_id, repr(sorted(s.fingerprint.items()))), []).append(analysis)
    anchors = {key: f"s{pos}" for pos, key in enumerate(by_series)}
    blocks = [_block(group[0].series, group, history, pos) for pos, group in enumerate(by_series.values())]
    since = f", drift since {history.since.commit or history.since.date}" if history.since else ""
    header = (f'<p class="note">{len(history.runs)} night(s), {len(by_series)} series, from {html.esc(history.path)}'
              f"{html.esc(since)}. Dotted: segment means; grey band: ±{BAND_SIGMAS}σ noise; dashed: change points "
              f"(red a regression, green an improvement, grey acknowledged).</p>"
              f"{_filters([g[0].series for g in by_series.values()])}")
    body = (f"<h2>Change points</h2>{_change_table(history, anchors)}<h2>Series</h2>"
            f'<div id="series">{"".join(blocks)}</div>'
            f"<style>.off {{ display: none; }}</style><script>{TREND_JS}</script>")
    return html.page(title, header, body)


def write_page(history: History, output: str, title: str = "trainkit history") -> None:
    write_text(output, render(history, title))

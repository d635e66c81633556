"""The answer card: trainkit.analysis.answer's document (as data, `Answer.to_dict()`) as the first thing
on a page, and in Markdown. `python -m trainkit recommend` writes answer.html and answer.md with it;
the matrix report (trainkit.reports.build) opens on one card per model and device.

The card says, in this order: the recommendation (precision, micro-batch, accumulation, ranks), its
effective speedup to fp32's target loss [interval], its parity verdict and margin, the memory it
uses and the headroom left, the time (and cost) to train, the runner-up and why it lost, each
rejected candidate and why, and what is not known (with the commands that would decide it). Every
number links to the evidence section below, which names the cells (and their rounds or seeds)
behind it.
"""

from __future__ import annotations

import os
from typing import Any

from .. import html

CARD_CSS = """
.answer-card{border:2px solid #4c72b0;border-radius:8px;padding:10px 16px;margin:8px 0 14px;background:#f7f9fd;
  max-width:1300px}
.answer-card h2{margin:2px 0 6px;font-size:1.35em}
.answer-card .kind-recommend h2{color:#1b5e20}.answer-card .figures{display:flex;flex-wrap:wrap;gap:8px 22px;
  margin:6px 0}
.answer-card .figure{min-width:150px}.answer-card .figure b{display:block;font-size:1.15em}
.answer-card .figure span{color:#555;font-size:.85em}.answer-card ul{margin:2px 0 4px 18px;padding:0}
.answer-card li{margin:1px 0;font-size:.92em}.answer-card code{font-size:.85em;background:#eef}
.answer-card .why{margin:4px 0;font-size:.95em}
"""


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f} MiB"


def ratio_text(ratio: dict[str, Any] | None) -> str:
    if not ratio or ratio.get("value") is None:
        return "not measured"
    if ratio.get("low") is None:
        why = ratio.get("reason") or "too few values"
        return f"{ratio['value']:.2f}x ({why if why.startswith('no interval') else 'no interval: ' + why})"
    return f"{ratio['value']:.2f}x [{ratio['low']:.2f}, {ratio['high']:.2f}]"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86400:,.1f} days"


def _anchor(doc: dict[str, Any], what: str, precision: str) -> str:
    return f"#{doc.get('anchor_prefix', '')}ev-{what}-{precision}"


def _link(doc: dict[str, Any], text: str, what: str, precision: str) -> str:
    """A figure linked to its evidence: this page's evidence section, or (`link_to`, on a matrix report)
    the section that lists the cells."""
    return f'<a href="{doc.get("link_to") or _anchor(doc, what, precision)}">{html.esc(text)}</a>'


def headline(doc: dict[str, Any]) -> str:
    """The answer in one line (plain text)."""
    decision = doc["decision"]
    chosen = _chosen(doc)
    if decision["kind"] == "recommend" and chosen:
        route = chosen["route"]
        return (f"Train {doc['model']} with {chosen['precision']}: micro-batch {route['micro_batch']} x accumulation "
                f"{route['grad_accum']} x {route['ranks']} rank{'s' if route['ranks'] > 1 else ''}")
    if decision["kind"] == "stay with fp32":
        ref = doc.get("reference")
        where = (f": micro-batch {ref['micro_batch']} x accumulation {ref['grad_accum']} x {ref['ranks']} "
                 f"rank{'s' if ref['ranks'] > 1 else ''}") if ref else ""
        return f"Stay with fp32 for {doc['model']}{where}"
    return f"Can't tell yet for {doc['model']}"


def _chosen(doc: dict[str, Any]) -> dict[str, Any] | None:
    name = doc["decision"].get("precision")
    return next((c for c in doc["candidates"] if c["precision"] == name), None)


def _figures(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value HTML) of the card's figures."""
    chosen, ref = _chosen(doc), doc.get("reference")
    out: list[tuple[str, str]] = []
    if chosen:
        p = chosen["precision"]
        loss = chosen["loss"]
        effective = ratio_text(chosen.get("effective"))
        out.append(("effective speedup to fp32's target loss", _link(doc, effective, "loss", p)))
        out.append(("throughput vs fp32 (paired rounds)", _link(doc, ratio_text(chosen.get("speed")), "speed", p)))
        out.append(("loss parity", _link(doc, f"{loss['verdict']} at margin {doc['margin']}", "loss", p)))
        route = chosen["route"]
    else:
        route, p = ref, "fp32"
        timed = [c for c in doc["candidates"] if (c.get("speed") or {}).get("value")]
        if timed:
            fastest = max(timed, key=lambda c: c["speed"]["value"])
            peak = (fastest.get("route") or {}).get("peak_bytes")
            out.append(("fastest vs fp32 (throughput)", _link(doc, f"{fastest['precision']} "
                                                          f"{ratio_text(fastest['speed'])}", "speed",
                                                          fastest["precision"])))
            out.append((f"{fastest['precision']} peak memory", _link(doc, _mib(peak), "plan", fastest["precision"])))
    if route:
        headroom = route.get("headroom_fraction")
        memory = f"{_mib(route.get('peak_bytes'))} / {_mib(route.get('headroom_bytes'))}" + (
            f" ({headroom:.0%})" if headroom is not None else "")
        label = f"{p} peak memory / headroom" if not chosen else "peak memory / headroom"
        out.append((label, _link(doc, memory, "plan", p)))
        if route.get("throughput_samples_per_s"):
            out.append(("throughput", _link(doc, f"{route['throughput_samples_per_s']:,.1f} samples/s", "speed", p)))
    ttt = doc.get("time_to_train")
    if ttt:
        text = f"{_duration(ttt['seconds'])} for {ttt['samples']:,.0f} samples"
        if ttt.get("tokens"):
            text = f"{_duration(ttt['seconds'])} for {ttt['tokens']:,.0f} tokens"
        if ttt.get("cost") is not None:
            text += f", {ttt['cost']:,.2f} at {ttt['price_per_hour']:g}/h"
        out.append(("time to train", _link(doc, text, "speed", p)))
    return out


def _unknown(doc: dict[str, Any]) -> list[str]:
    """What is not known: the decision's list and what the budget did not afford."""
    afforded = doc["budget"].get("not_afforded", ())
    return list(doc["decision"].get("unknown") or ()) + [f"not afforded: {n}" for n in afforded]


def grouped_needs(doc: dict[str, Any]) -> list[tuple[str, list[str], str]]:
    """The decision's needs grouped by what decides them: (what, precisions, one command for them all)."""
    groups: dict[str, tuple[list[str], str]] = {}
    for need in doc["decision"].get("needs", ()):
        names, command = groups.setdefault(need["what"], ([], need["command"]))
        names.append(need["precision"])
    out = []
    for what, (names, command) in groups.items():
        if len(names) > 1:
            command = command.replace(f"--precision {names[0]}", f"--precision {','.join(names)}")
        out.append((what, names, command))
    return out


def card(doc: dict[str, Any]) -> str:
    """The card (an HTML fragment with its own style)."""
    decision = doc["decision"]
    kind = {"recommend": "recommend", "stay with fp32": "stay"}.get(decision["kind"], "cant-tell")
    figures = "".join(f'<div class="figure"><span>{html.esc(label)}</span><b>{value}</b></div>'
                      for label, value in _figures(doc))
    parts = [f'<style>{CARD_CSS}</style><div class="answer-card kind-{kind}" id="{doc.get("anchor_prefix", "")}answer">'
             f'<div class="kind-{kind}"><h2>{html.esc(headline(doc))}</h2></div>',
             f'<p class="why"><b>{html.esc(decision["kind"])}</b>: {html.esc(decision["reason"])}</p>',
             f'<div class="figures">{figures}</div>']
    runner = decision.get("runner_up")
    if runner:
        parts.append(f'<p class="why">Runner-up: <b>{html.esc(runner["precision"])}</b> — {html.esc(runner["why"])}'
                     + (f' (diagnostic: {html.esc(runner["diagnostic"])})' if runner.get("diagnostic") else "")
                     + "</p>")
    rejected = [v for v in decision["verdicts"] if v["status"] in ("rejected", "no-win")
                and (not runner or v["precision"] != runner["precision"])]
    if rejected:
        parts.append("<p class='why'>Not chosen:</p><ul>" + "".join(
            f"<li>{_link(doc, v['precision'], 'loss', v['precision'])}: {html.esc(v['why'])}"
            + (f" <i>diagnostic: {html.esc(v['diagnostic'])}</i>" if v.get("diagnostic") else "") + "</li>"
            for v in rejected) + "</ul>")
    unknown = _unknown(doc)
    if unknown or decision.get("needs"):
        parts.append("<p class='why'>Not known:</p><ul>" + "".join(f"<li>{html.esc(u)}</li>" for u in unknown)
                     + "".join(f"<li>to decide {html.esc(', '.join(names))}: {html.esc(what)}: "
                               f"<code>{html.esc(command)}</code></li>" for what, names, command in grouped_needs(doc))
                     + "</ul>")
    budget = doc["budget"]
    gpu = " · " + html.esc(doc["gpu_name"]) if doc.get("gpu_name") else ""
    parts.append(f'<p class="note">{html.esc(doc["device"])}{gpu}'
                 f' · target batch {doc["target_batch"]} · {doc["confidence"]:.0%} intervals · '
                 f'{budget["cells_run"]} cells run, {budget["cells_reused"]} reused, {budget["spent_s"]:.0f} s'
                 + (f' of a {budget["budget_s"]:.0f} s budget' if budget.get("budget_s") else "") + "</p></div>")
    return "".join(parts)


def _cells(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(html.esc(n) for n in names) or "none"


def evidence(doc: dict[str, Any]) -> str:
    """Per candidate (and fp32), the cells and seeds behind each figure: the card's links land here."""
    rows = []
    ref = doc.get("reference") or {}
    prefix = doc.get("anchor_prefix", "")
    rows.append(f'<h3 id="{prefix}ev-plan-fp32">fp32 (the reference)</h3><p>route: micro-batch '
                f'{ref.get("micro_batch")} '
                f'x accumulation {ref.get("grad_accum")} x {ref.get("ranks")}; peak {_mib(ref.get("peak_bytes"))} '
                f'({html.esc(ref.get("peak_measure"))}), headroom {_mib(ref.get("headroom_bytes"))}; plan cells: '
                f'{_cells(ref.get("cells", ()))}</p><span id="{prefix}ev-speed-fp32"></span>'
                f'<span id="{prefix}ev-loss-fp32"></span>')
    for c in doc["candidates"]:
        p, route, loss = c["precision"], c.get("route"), c["loss"]
        rows.append(f'<h3 id="{prefix}ev-plan-{html.esc(p)}">{html.esc(p)}</h3>')
        if c.get("unsupported"):
            rows.append(f"<p>not run: {html.esc(c['unsupported'])}</p>")
            rows.append(f'<span id="{prefix}ev-speed-{html.esc(p)}"></span>'
                        f'<span id="{prefix}ev-loss-{html.esc(p)}"></span>')
            continue
        if route:
            rows.append(f"<p>route: micro-batch {route['micro_batch']} x accumulation {route['grad_accum']} x "
                        f"{route['ranks']}; peak {_mib(route.get('peak_bytes'))} "
                        f"({html.esc(route.get('peak_measure'))}), headroom {_mib(route.get('headroom_bytes'))}; "
                        f"plan cells: {_cells(route.get('cells', ()))}</p>")
        else:
            rows.append(f"<p>no route: {html.esc(c.get('skipped') or c.get('route_note') or 'not planned')}</p>")
        speed = c.get("speed")
        rows.append(f'<p id="{prefix}ev-speed-{html.esc(p)}">throughput vs fp32: {html.esc(ratio_text(speed))}'
                    + (f" over {speed['n']} rounds ({html.esc(speed['method'])})" if speed else "")
                    + f"; cells: {_cells(c.get('speed_cells', ()))}</p>")
        diff = ("" if loss.get("difference") is None else
                f"; eval loss minus fp32's {loss['difference']:+.5f}"
                + (f" [{loss['difference_low']:+.5f}, {loss['difference_high']:+.5f}]"
                   if loss.get("difference_low") is not None else "")
                + (f" vs margin +-{loss['margin_loss']:.5f}" if loss.get("margin_loss") is not None else "")
                + (f" at {loss['confidence']:.1%}" if loss.get("confidence") else ""))
        steps = loss.get("steps_ratio")
        rows.append(f'<p id="{prefix}ev-loss-{html.esc(p)}">parity: {html.esc(loss["verdict"])}{html.esc(diff)}; seeds '
                    f'{", ".join(str(s) for s in loss.get("seeds", ())) or "none"}'
                    + (f"; steps-to-target ratio {html.esc(ratio_text(steps))}" if steps else "")
                    + (f"; effective {html.esc(ratio_text(c.get('effective')))}" if c.get("effective") else "")
                    + (f"; {html.esc(loss['reason'])}" if loss.get("reason") else "")
                    + (f"; diagnostic: {html.esc(loss['diagnostic'])}" if loss.get("diagnostic") else "")
                    + f"; cells: {_cells(loss.get('cells', ()))}</p>")
    return "".join(rows)


def page(doc: dict[str, Any]) -> str:
    rules = "".join(f"<li><b>{html.esc(k)}</b>: {html.esc(v)}</li>" for k, v in doc.get("rules", {}).items())
    files = ", ".join(f"{html.esc(k)}: {html.esc(v)}" for k, v in doc.get("files", {}).items())
    body = (f'<section id="evidence"><h2>Evidence</h2><p class="note">Files beside this page: {files}. Every record '
            f"in records.jsonl carries its purpose (probe, plan, speed, parity), its round or seed.</p>"
            f"{evidence(doc)}</section><section id=\"rules\"><h2>The rule</h2><ul>{rules}</ul></section>")
    return html.page(f"trainkit answer: {doc['model']}", card(doc), body, with_plotly=False)


def markdown(doc: dict[str, Any]) -> str:
    """The card and the evidence in Markdown."""
    decision = doc["decision"]
    lines = [f"# {headline(doc)}", "", f"**{decision['kind']}**: {decision['reason']}", ""]
    chosen = _chosen(doc)
    route = chosen["route"] if chosen else doc.get("reference")
    if chosen:
        lines += [f"- effective speedup to fp32's target loss: {ratio_text(chosen.get('effective'))}",
                  f"- throughput vs fp32 (paired rounds): {ratio_text(chosen.get('speed'))}",
                  f"- loss parity: {chosen['loss']['verdict']} at margin {doc['margin']}"]
    if route:
        lines.append(f"- peak memory {_mib(route.get('peak_bytes'))}, headroom {_mib(route.get('headroom_bytes'))}")
        if route.get("throughput_samples_per_s"):
            lines.append(f"- throughput {route['throughput_samples_per_s']:,.1f} samples/s")
    ttt = doc.get("time_to_train")
    if ttt:
        lines.append(f"- time to train {ttt['samples']:,.0f} samples: {_duration(ttt['seconds'])}"
                     + (f", cost {ttt['cost']:,.2f} at {ttt['price_per_hour']:g}/h"
                        if ttt.get("cost") is not None else ""))
    runner = decision.get("runner_up")
    if runner:
        lines += ["", f"Runner-up: **{runner['precision']}**: {runner['why']}"
                  + (f" (diagnostic: {runner['diagnostic']})" if runner.get("diagnostic") else "")]
    lines += ["", "| candidate | route | throughput vs fp32 | parity | effective speedup | status |",
              "|---|---|---|---|---|---|"]
    verdicts = {v["precision"]: v for v in decision["verdicts"]}
    for c in doc["candidates"]:
        r = c.get("route")
        shown = f"{r['micro_batch']} x {r['grad_accum']} x {r['ranks']}" if r else "-"
        v = verdicts.get(c["precision"], {})
        lines.append(f"| {c['precision']} | {shown} | {ratio_text(c.get('speed'))} | {c['loss']['verdict']} | "
                     f"{ratio_text(c.get('effective')) if c.get('effective') else '-'} | {v.get('status', '')}: "
                     f"{str(v.get('why', '')).replace('|', '/')}"
                     + (f"; diagnostic: {v['diagnostic']}" if v.get("diagnostic") else "") + " |")
    unknown = _unknown(doc)
    if unknown or decision.get("needs"):
        lines += ["", "Not known:", ""] + [f"- {u}" for u in unknown]
        lines += [f"- to decide {', '.join(names)}: {what}: `{command}`" for what, names, command in grouped_needs(doc)]
    budget = doc["budget"]
    lines += ["", f"{doc['device']}, target batch {doc['target_batch']}, {doc['confidence']:.0%} intervals; "
                  f"{budget['cells_run']} cells run, {budget['cells_reused']} reused, {budget['spent_s']:.0f} s.", ""]
    return "\n".join(lines)


def write_pages(doc: dict[str, Any], directory: str) -> list[str]:
    """answer.html and answer.md in `directory`; the names written."""
    for name, text in (("answer.html", page(doc)), ("answer.md", markdown(doc))):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as out:
            out.write(text)
    return ["answer.html", "answer.md"]

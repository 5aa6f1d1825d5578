"""Pure formatting of results: a self-contained HTML audit report (no computation, no file I/O).

``render_html(run, images)`` takes a run record (the ``run.json`` that ``--save-run DIR`` writes:
``command``, ``argv``, ``subcommand``, ``method``, ``seed``, ``created``, ``versions``, ``result``,
``images``) and the PNG bytes of its images, and returns one HTML page with everything inlined
(images as data: URIs, plots as inline SVG): the verdict at the top, recovered triggers beside the
true one when known, the anomaly-index plot and a ROC curve when the result has one, before/after
metrics, per-detector details, and the exact command, versions and seed.
"""
from __future__ import annotations

import base64
import html
import json
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:60rem;color:#1b1f24}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.verdict{padding:1rem 1.25rem;border-radius:.5rem;font-size:1.2rem;font-weight:600}
.bad{background:#fde2e1;border:1px solid #e5534b}.good{background:#dafbe1;border:1px solid #2da44e}
.info{background:#ddf4ff;border:1px solid #54aeff}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
.imgs{display:flex;flex-wrap:wrap;gap:1rem}.imgs figure{margin:0;text-align:center}
.imgs img{image-rendering:pixelated;border:1px solid #999;max-width:12rem}
code,pre{background:#f6f8fa;padding:.1rem .3rem;border-radius:.25rem}pre{padding:.75rem;overflow:auto}
"""


# Marks <body data-images-loaded="k/n"> once the page has loaded (used by the headless-browser test).
LOAD_CHECK = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});</script>"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def _img(name: str, data: bytes, caption: str) -> str:
    b64 = base64.b64encode(data).decode()
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def verdict_block(run: dict) -> str:
    r, sub = run.get("result", {}), run.get("subcommand")
    if sub == "scan":
        if r.get("backdoored"):
            s = ", ".join(map(str, r.get("suspects", []))) or "?"
            return f'<div class="verdict bad">BACKDOORED — suspected target label(s): {_e(s)}</div>'
        return '<div class="verdict good">No backdoor found</div>'
    if sub == "repair" and "before" in r and "after" in r:
        b, a = r["before"], r["after"]
        return (f'<div class="verdict info">Repaired with {_e(r.get("method"))}: attack success '
                f'{_pct(b.get("attack_success_rate"))} → {_pct(a.get("attack_success_rate"))}, clean accuracy '
                f'{_pct(b.get("clean_accuracy"))} → {_pct(a.get("clean_accuracy"))}</div>')
    scalars = {k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) and k != "output"}
    items = "; ".join(f"{_e(k)} = {_e(v)}" for k, v in list(scalars.items())[:6])
    return f'<div class="verdict info">{_e(run.get("subcommand") or "run")}: {items}</div>'


def svg_bars(labels: list, values: list[float], threshold: float | None, title: str,
             highlight: set | None = None) -> str:
    """A bar chart (e.g. anomaly index per label) as inline SVG, with a dashed threshold line;
    bars in ``highlight`` (default: above the threshold) are red."""
    if not values:
        return ""
    W, H, pad = 640, 240, 30
    vmax = max(max(values), threshold or 0, 1e-9) * 1.1
    bw = (W - 2 * pad) / len(values)
    bars = []
    for i, (lab, v) in enumerate(zip(labels, values)):
        h = (H - 2 * pad) * v / vmax
        x = pad + i * bw
        hot = lab in highlight if highlight is not None else threshold is not None and v > threshold
        color = "#e5534b" if hot else "#54aeff"
        bars.append(f'<rect x="{x + 2:.1f}" y="{H - pad - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" '
                    f'fill="{color}"><title>{_e(lab)}: {v:.3f}</title></rect>'
                    f'<text x="{x + bw / 2:.1f}" y="{H - pad + 14}" font-size="11" text-anchor="middle">{_e(lab)}</text>')
    line = ""
    if threshold is not None:
        y = H - pad - (H - 2 * pad) * threshold / vmax
        line = (f'<line x1="{pad}" x2="{W - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#333" stroke-dasharray="4 3"/>'
                f'<text x="{W - pad}" y="{y - 4:.1f}" font-size="11" text-anchor="end">threshold {threshold:g}</text>')
    return (f'<figure><svg role="img" aria-label="{_e(title)}" width="{W}" height="{H}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(bars)}{line}</svg><figcaption>{_e(title)}</figcaption></figure>')


def svg_roc(fpr: list[float], tpr: list[float], title: str) -> str:
    W = H = 260
    pad = 30
    pts = " ".join(f"{pad + (W - 2 * pad) * f:.1f},{H - pad - (H - 2 * pad) * t:.1f}" for f, t in zip(fpr, tpr))
    return (f'<figure><svg role="img" aria-label="{_e(title)}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect x="{pad}" y="{pad}" width="{W - 2 * pad}" height="{H - 2 * pad}" fill="none" stroke="#999"/>'
            f'<line x1="{pad}" y1="{H - pad}" x2="{W - pad}" y2="{pad}" stroke="#ccc" stroke-dasharray="3 3"/>'
            f'<polyline points="{pts}" fill="none" stroke="#e5534b" stroke-width="2"/>'
            f'<text x="{W / 2}" y="{H - 6}" font-size="11" text-anchor="middle">false-positive rate</text></svg>'
            f"<figcaption>{_e(title)}</figcaption></figure>")


def _metrics_table(r: dict) -> str:
    keys = [("clean accuracy", "clean_accuracy"), ("attack success rate", "attack_success_rate"),
            ("robust accuracy", "robust_accuracy")]
    rows = "".join(f"<tr><td>{n}</td><td>{_pct(r['before'].get(k))}</td><td>{_pct(r['after'].get(k))}</td></tr>"
                   for n, k in keys)
    return f"<table><tr><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>"


def render_html(run: dict, images: dict[str, bytes]) -> str:
    r = run.get("result", {})
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>backdoorlab report</title>"
             f"<style>{CSS}</style></head><body><h1>backdoorlab audit report</h1>", verdict_block(run)]
    trig = {k: v for k, v in images.items() if k != "true_trigger" and ("trigger" in k or "mask" in k)}
    if trig or "true_trigger" in images:
        parts.append("<h2>Triggers</h2><div class='imgs'>")
        if "true_trigger" in images:
            parts.append(_img("true_trigger", images["true_trigger"],
                              f"true trigger (target {r.get('true_target', '?')})"))
        suspects = {f"label{t}" for t in r.get("suspects", [])}
        order = sorted(trig, key=lambda k: (not any(f"_{s}_" in k for s in suspects), k))
        parts += [_img(k, trig[k], k.replace("_", " ") + (" (suspect)" if any(f"_{s}_" in k for s in suspects)
                                                           else "")) for k in order]
        parts.append("</div>")
    plots = []
    if isinstance(r.get("anomaly_index"), list):
        labels = r.get("labels") or list(range(len(r["anomaly_index"])))
        thr = r.get("threshold") if isinstance(r.get("threshold"), (int, float)) else None
        plots.append(svg_bars(labels, [float(v) for v in r["anomaly_index"]], thr,
                              "anomaly index per label (flagged in red)", set(r.get("suspects", []))))
    roc = r.get("roc")
    if isinstance(roc, dict) and roc.get("fpr"):
        plots.append(svg_roc(roc["fpr"], roc["tpr"], f"ROC (AUROC {r.get('auroc', '?')})"))
    plots += [_img(k, v, k.replace("_", " ")) for k, v in sorted(images.items())
              if k not in trig and k != "true_trigger"]
    if plots:
        parts.append("<h2>Plots</h2><div class='imgs'>" + "".join(plots) + "</div>")
    if isinstance(r.get("before"), dict) and isinstance(r.get("after"), dict):
        parts.append("<h2>Before / after</h2>" + _metrics_table(r))
    if isinstance(r.get("detectors"), dict):
        rows = "".join(f"<tr><td>{_e(n)}</td><td>{'BACKDOORED' if d.get('backdoored') else 'clean'}</td>"
                       f"<td>{_e(', '.join(map(str, d.get('suspects', []))) or '-')}</td>"
                       f"<td>{_e(round(d.get('score', 0), 4))}</td><td>{_e(d.get('threshold'))}</td>"
                       f"<td>{_e(d.get('seconds'))}</td></tr>" for n, d in r["detectors"].items())
        parts.append("<h2>Detectors</h2><table><tr><th>detector</th><th>verdict</th><th>suspects</th>"
                     f"<th>score</th><th>threshold</th><th>seconds</th></tr>{rows}</table>")
    v = run.get("versions", {})
    parts.append("<h2>Reproduce</h2>"
                 f"<p><code>{_e(run.get('command', ''))}</code></p>"
                 f"<table><tr><td>seed</td><td>{_e(run.get('seed'))}</td></tr>"
                 f"<tr><td>created</td><td>{_e(run.get('created'))}</td></tr>"
                 + "".join(f"<tr><td>{_e(k)}</td><td>{_e(val)}</td></tr>" for k, val in v.items())
                 + "</table>")
    parts.append(f"<details><summary>raw result</summary><pre>{_e(json.dumps(r, indent=2)[:200000])}</pre></details>")
    parts.append(LOAD_CHECK + "</body></html>")
    return "\n".join(parts)

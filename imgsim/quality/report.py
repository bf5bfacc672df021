"""A self-contained HTML report of an evaluation: tables and inline SVG plots, nothing fetched.

Plots: precision@5 by label (bars), precision against k (lines), and the
near-duplicate precision-recall curve with the index's threshold and the
recommended one marked. With --compare, both artifacts' series share the plots.
"""
from __future__ import annotations

import html
import json

WIDTH, HEIGHT, PAD = 640, 300, 48
COLOURS = ("#1f77b4", "#d62728")


def render(results: list[dict], title: str = "imgsim evaluation") -> str:
    """results: one evaluation per artifact (the first is the one evaluated, a second is --compare)."""
    parts = [f"<h1>{_e(title)}</h1>", _summary_table(results)]
    if any("precision_at_k" in r for r in results):
        parts += ["<h2>Precision against k</h2>",
                  _line_plot([(r["index"], sorted((int(k), v) for k, v in r["precision_at_k"].items()))
                              for r in results if "precision_at_k" in r], "k", "precision@k", x_max=20)]
        parts += ["<h2>Precision@5 by label</h2>", _bars(results[0])]
        if results[0].get("confused_pairs"):
            parts += ["<h2>Most confused labels</h2>", _table(
                ["labels", "neighbours", "share"],
                [[" ↔ ".join(p["labels"]), p["count"], p["share_of_neighbours"]] for p in results[0]["confused_pairs"]])]
    near = [r for r in results if "near_duplicates" in r]
    if near:
        parts += ["<h2>Near duplicates: precision against recall</h2>",
                  _line_plot([(r["index"], [(p["recall"], p["precision"]) for p in r["near_duplicates"]["curve"]])
                              for r in near], "recall", "precision", x_max=1.0,
                             marks=[(r["near_duplicates"]["recall"], r["near_duplicates"]["precision"],
                                     f"threshold {r['near_duplicates']['threshold']}") for r in near[:1]]
                             + [(r["near_duplicates"]["at_recommended"]["recall"],
                                 r["near_duplicates"]["at_recommended"]["precision"],
                                 f"recommended {r['near_duplicates']['recommended_threshold']}") for r in near[:1]]),
                  "<h2>Near duplicates by perturbation</h2>", _table(
                      ["perturbation", "recall@1", "mean cosine to original"],
                      [[k, f"{v['recall_at_1']:.3f}", f"{v['mean_cosine_to_original']:.4f}"]
                       for k, v in near[0]["near_duplicates"]["per_kind"].items()])]
    parts.append("<h2>Raw results</h2><pre>" + _e(json.dumps(results, indent=1, default=str)[:200_000]) + "</pre>")
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>" + _e(title) + "</title><style>"
            "body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}pre{font-size:11px;overflow:auto}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def _summary_table(results: list[dict]) -> str:
    keys = ["precision_at_1", "precision_at_5", "precision_at_10", "map_at_10", "labelled",
            "near_duplicate_recall_at_1", "recommended_threshold"]
    rows = [[k] + [_fmt(r.get(k)) for r in results] for k in keys if any(k in r for r in results)]
    return _table(["metric"] + [r["index"] for r in results], rows)


def _bars(result: dict) -> str:
    labels = sorted(result["per_label"].items(), key=lambda kv: -kv[1]["precision_at_5"])
    row, height, left = 18, 18 * len(labels) + 10, 300
    out = [f'<svg width="{WIDTH + 100}" height="{height}" role="img" aria-label="precision at 5 by label">']
    for i, (name, v) in enumerate(labels):
        y, w = 5 + i * row, (WIDTH - left) * v["precision_at_5"]
        out.append(f'<text x="{left - 6}" y="{y + 13}" font-size="12" text-anchor="end">{_e(name)} ({v["count"]})</text>'
                   f'<rect class="bar" x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" fill="{COLOURS[0]}"/>'
                   f'<text x="{left + 5 + w:.1f}" y="{y + 13}" font-size="11">{v["precision_at_5"]:.3f}</text>')
    return "".join(out) + "</svg>"


def _line_plot(series, x_label: str, y_label: str, x_max: float, marks=()) -> str:
    def sx(x):
        return PAD + (WIDTH - 2 * PAD) * x / x_max

    def sy(y):
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * y

    out = [f'<svg width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{_e(y_label)} against {_e(x_label)}">',
           f'<line x1="{PAD}" y1="{sy(0)}" x2="{sx(x_max)}" y2="{sy(0)}" stroke="#000"/>'
           f'<line x1="{PAD}" y1="{sy(0)}" x2="{PAD}" y2="{sy(1)}" stroke="#000"/>'
           f'<text x="{WIDTH / 2}" y="{HEIGHT - 10}" font-size="12">{_e(x_label)}</text>'
           f'<text x="4" y="{PAD - 10}" font-size="12">{_e(y_label)}</text>']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<text x="{PAD - 34}" y="{sy(tick) + 4}" font-size="10">{tick:.2f}</text>')
    for tick in ((1, 5, 10, 15, 20) if x_max > 1 else (0, 0.25, 0.5, 0.75, 1.0)):
        out.append(f'<text x="{sx(tick) - 6:.1f}" y="{sy(0) + 14}" font-size="10">{tick:g}</text>')
    for i, (name, points) in enumerate(series):
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        out.append(f'<polyline class="series" points="{path}" fill="none" stroke="{COLOURS[i % 2]}" stroke-width="2"/>'
                   f'<text x="{PAD + 10}" y="{HEIGHT - 4 - 14 * (len(series) - 1 - i)}" font-size="11" '
                   f'fill="{COLOURS[i % 2]}">— {_e(name)}</text>')
    for x, y, text in marks:
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="#000"/>'
                   f'<text x="{sx(x) - 120:.1f}" y="{sy(y) + 16:.1f}" font-size="11">{_e(text)}</text>')
    return "".join(out) + "</svg>"


def _table(header, rows) -> str:
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _e(value) -> str:
    return html.escape(str(value))

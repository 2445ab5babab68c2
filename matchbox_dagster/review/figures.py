"""The evaluation view: scores against judgements, curves as SVG, and suggested thresholds.

Precision, recall and F1 against judgements; per model the threshold in use beside the one
maximising F1 on the judged pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

import polars as pl

from matchbox_dagster.common.errors import MatchboxNoJudgements
from matchbox_dagster.evaluation.intervals import wilson
from matchbox_dagster.evaluation.metrics import PairwiseScores, judged_pairs, threshold_curve
from matchbox_dagster.evaluation.resolver import CURVE_THRESHOLDS, evaluate_resolver
from matchbox_dagster.evaluation.thresholds import (
    ModelThreshold,
    labels_within,
    model_threshold,
)
from matchbox_dagster.review.state import Target
from matchbox_dagster.store.base import MatchboxDBAdapter

COLOURS = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f")


@dataclass(frozen=True)
class Figures:
    """A resolver's scores, model curves and per-model thresholds.

    Scores against judgements (None: nothing judged yet), model curves, and per model the
    threshold in use beside the suggested one.
    """

    scores: PairwiseScores | None
    curves: dict[str, list[dict[str, Any]]]
    thresholds: list[ModelThreshold] = field(default_factory=list)


def figures(store: MatchboxDBAdapter, target: Target) -> Figures:
    """Score the target's resolver against the judgements of users who may read it."""
    entities = target.records.select(pl.col("entity").alias("id"), pl.col("leaf").alias("leaf_id"))
    try:
        found = evaluate_resolver(store, target.path, [], entities, truth=False)
    except MatchboxNoJudgements:
        return Figures(None, {})
    judgements, expansion = store.get_collection_judgements(target.path.collection)
    labels = labels_within(judged_pairs(judgements, expansion), target.records.get_column("leaf"))
    curves = {}
    suggested = []
    for model, in_use in target.lineage.thresholds.items():
        edges = store.get_model_data(target.path.model_copy(update={"name": model}))
        suggested.append(model_threshold(model, edges, labels, in_use))
        curve = threshold_curve(edges, labels, thresholds=CURVE_THRESHOLDS)
        if not curve.get_column("edges").sum():
            continue  # no judged pair among its edges: nothing to draw
        curves[model] = [
            r | ({"precision": None} if not r["tp"] + r["fp"] else {})
            for r in curve.sort("threshold").iter_rows(named=True)
        ]
    return Figures(found.scores, curves, suggested)


def _line(points: list[tuple[float, float]], colour: str, dash: str = "") -> str:
    path = " ".join(f"{40 + 320 * x:.1f},{220 - 200 * y:.1f}" for x, y in points)
    style = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2"{style} points="{path}"/>'


def curve_svg(curves: dict[str, list[dict[str, Any]]]) -> str:
    """Precision (solid) and recall (dashed) by threshold, one colour per model: inline SVG."""
    lo, hi = min(CURVE_THRESHOLDS), max(CURVE_THRESHOLDS)
    parts = [
        '<svg id="curves" xmlns="http://www.w3.org/2000/svg" width="520" height="260" '
        'role="img" aria-label="precision and recall by threshold">',
        '<rect x="40" y="20" width="320" height="200" fill="#fafafa" stroke="#999"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        y = 220 - 200 * tick
        parts.append(f'<text x="8" y="{y + 4:.0f}" font-size="11">{tick:.1f}</text>')
    for t in (lo, (lo + hi) / 2, hi):
        x = 40 + 320 * (t - lo) / (hi - lo)
        parts.append(f'<text x="{x - 10:.0f}" y="238" font-size="11">{t:.2f}</text>')
    parts.append('<text x="150" y="254" font-size="11">threshold</text>')
    for i, (model, rows) in enumerate(sorted(curves.items())):
        colour = COLOURS[i % len(COLOURS)]
        prec = [
            ((r["threshold"] - lo) / (hi - lo), r["precision"])
            for r in rows
            if r["precision"] is not None
        ]
        rec = [((r["threshold"] - lo) / (hi - lo), r["recall"]) for r in rows]
        if prec:
            parts.append(_line(prec, colour))
        if rec:
            parts.append(_line(rec, colour, "5,3"))
        parts.append(
            f'<text x="370" y="{40 + 16 * i}" font-size="12" fill="{colour}">{escape(model)}</text>'
        )
    parts.append('<text x="370" y="200" font-size="11">— precision</text>')
    parts.append('<text x="370" y="214" font-size="11">- - recall</text>')
    return "".join(parts) + "</svg>"


def thresholds_html(rows: list[ModelThreshold]) -> str:
    """Per model: threshold in use and its F1, suggested threshold, its F1 and interval."""
    cells = []
    for row in rows:
        found = row.suggestion
        best = (
            '<td colspan="3">no judged pair among its edges</td>'
            if found is None
            else f'<td class="suggested">{found.threshold:.3f}</td><td>{found.f1:.3f}</td>'
            f"<td>{found.low:.3f} – {found.high:.3f}</td>"
        )
        cells.append(
            f'<tr data-model="{escape(row.model)}"><th>{escape(row.model)}</th>'
            f'<td class="in-use">{row.in_use:.3f}</td><td>{row.f1_in_use:.3f}</td>{best}</tr>'
        )
    return (
        "<h2>Thresholds from judgements, per model</h2>"
        "<p>The threshold maximising F1 on the judged pairs among each model's edges (before "
        "clustering), with a 95% bootstrap interval, beside the threshold in use.</p>"
        '<table class="recs" id="thresholds"><tr><th>model</th><th>in use</th>'
        "<th>F1 in use</th><th>suggested</th><th>F1 there</th><th>95% interval</th></tr>"
        + "".join(cells)
        + "</table>"
    )


def evaluation_html(found: Figures, resolver: str, collection: str) -> str:
    """The evaluation view's body."""
    back = f'<p><a href="/review/{escape(collection)}">back to review</a></p>'
    if found.scores is None:
        return back + '<p id="nofigures">No judged pairs yet: judge some entities first.</p>'
    s = found.scores
    rows = []
    for name, value, (lo, hi) in (
        ("precision", s.precision, wilson(s.tp, s.tp + s.fp)),
        ("recall", s.recall, wilson(s.tp, s.tp + s.fn)),
    ):
        rows.append(
            f'<tr><th>{name}</th><td id="{name}">{value:.3f}</td><td>{lo:.3f} – {hi:.3f}</td></tr>'
        )
    rows.append(f'<tr><th>F1</th><td id="f1">{s.f1:.3f}</td><td></td></tr>')
    table = (
        f"<p>Resolver <b>{escape(resolver)}</b> against judgements of "
        f'<span id="pairs">{s.pairs}</span> judged pairs (Wilson 95% intervals).</p>'
        '<table class="recs" id="scores"><tr><th></th><th>value</th><th>95% interval</th></tr>'
        + "".join(rows)
        + "</table>"
    )
    curves = ""
    if found.curves:
        curves = (
            "<h2>Precision and recall by threshold, per model</h2>"
            "<p>Each model's edges at or above a threshold, against the judged pairs.</p>"
            + curve_svg(found.curves)
        )
    suggested = thresholds_html(found.thresholds) if found.thresholds else ""
    return back + table + curves + suggested


__all__ = ["Figures", "curve_svg", "evaluation_html", "figures", "thresholds_html"]

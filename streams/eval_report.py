"""The ``streamrec eval --report DIR`` output: PNG plots and one self-contained HTML page.

Plots: each accuracy metric over the replay's time windows, one line per method (drift and
long-term effects show up here), and the item exposure (Lorenz) curve per method. The HTML page
embeds the PNGs as base64 so it can be mailed or attached as one file.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
import orjson

from state.evaluation import EvalResult
from state.metrics import lorenz_curve

_DPI = 110


def _over_time(result: EvalResult, metric: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    t0 = result.window_starts_ms[0] if result.window_starts_ms else 0
    starts = [(t - t0) / 86_400_000 for t in result.window_starts_ms]
    for name, method in result.methods.items():
        values = method.windows.get(metric, [])
        points = [(t, v) for t, v in zip(starts, values, strict=False) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_title(f"{result.dataset}: {metric} per time window (test-then-train)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_xlabel("days since the first event (window start)")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _exposure(result: EvalResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="equal exposure")
    for name, method in result.methods.items():
        x, y = lorenz_curve(method.exposure)
        gini = method.metrics.get("gini_items", 0.0)
        ax.plot(x, y, label=f"{name} (Gini {gini:.2f})")
    ax.set_title(f"{result.dataset}: item exposure in top-10 lists")
    ax.set_xlabel("share of items, least exposed first")
    ax.set_ylabel("share of exposure")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _table_html(result: EvalResult) -> str:
    table = result.table()
    columns = sorted({k for m in table.values() for k in m}, key=_column_order)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for name, metrics in table.items():
        cells = "".join(
            f"<td>{metrics[c]:.4f}</td>" if c in metrics else "<td>-</td>" for c in columns
        )
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return f"<table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"


def _column_order(name: str) -> tuple[int, str]:
    first = ["hr@10", "ndcg@10", "mrr", "auc", "coverage", "diversity", "novelty", "gini_items"]
    return (first.index(name), name) if name in first else (len(first), name)


def write_report(result: EvalResult, directory: Path) -> Path:
    """Write the plots, ``metrics.json`` and ``index.html`` into ``directory``; return the page."""
    directory.mkdir(parents=True, exist_ok=True)
    plots = [
        _over_time(result, "ndcg@10", directory / "ndcg_over_time.png"),
        _over_time(result, "hr@10", directory / "hr_over_time.png"),
        _over_time(result, "coverage", directory / "coverage_over_time.png"),
        _exposure(result, directory / "exposure.png"),
    ]
    payload = {
        "dataset": result.dataset,
        "events": result.n_events,
        "items": result.n_items,
        "scored_positives": result.n_tests,
        "window_starts_ms": result.window_starts_ms,
        "methods": {
            name: {"metrics": m.metrics, "windows": m.windows} for name, m in result.methods.items()
        },
    }
    (directory / "metrics.json").write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    images = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
        for p in plots
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>streamrec evaluation: {html.escape(result.dataset)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }}
figure {{ display: inline-block; margin: 1em; }}
</style></head><body>
<h1>streamrec prequential evaluation: {html.escape(result.dataset)}</h1>
<p>{result.n_events:,} events replayed in event-time order, test-then-train;
{result.n_items:,} items; {result.n_tests:,} scored positives.</p>
{_table_html(result)}
{images}
</body></html>
"""
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return index

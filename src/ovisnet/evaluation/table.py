"""Plain-text table of evaluation metrics, in percent."""

from __future__ import annotations

from collections.abc import Mapping


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """Render metrics (fractions, -1 = no ground truth) as an aligned two-column table in percent.

    Args:
        metrics: As returned by :func:`ovisnet.evaluation.evaluate_results`.

    Returns:
        The table, one metric per line; ``n/a`` where a setting has no ground truth.
    """
    header = ("metric", "value (%)")
    width = max([len(header[0]), *(len(k) for k in metrics)])
    lines = [f"{header[0]:<{width}}  {header[1]}", f"{'-' * width}  {'-' * len(header[1])}"]
    for key, value in metrics.items():
        shown = "n/a" if value < 0 else f"{100.0 * value:.2f}"
        lines.append(f"{key:<{width}}  {shown:>{len(header[1])}}")
    return "\n".join(lines)

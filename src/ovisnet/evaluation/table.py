"""The one plain-text table of evaluation metrics, in percent (every printed AP table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

NOT_AVAILABLE = "n/a"


def format_metrics_table(
    metrics: Mapping[str, float],
    keys: Sequence[str] | None = None,
    *,
    title: str = "",
    percent: bool = False,
    one_row: bool = False,
) -> str:
    """Render metrics as an aligned table in percent; ``n/a`` where a setting has no ground truth.

    The Python API keeps the official ``-1`` for "no ground truth" (``-100`` once in percent);
    the table shows ``n/a`` for every negative value instead of a number that reads as a score.

    Args:
        metrics: fractions as returned by :func:`ovisnet.evaluation.evaluate_results`, or
            percent (``percent=True``, e.g. the system's ``last_metrics``).
        keys: the metrics to show, in order (those missing from ``metrics`` are skipped);
            default: all of ``metrics``.
        title: an optional first line.
        percent: the values are already in percent.
        one_row: the metrics side by side under a header row (the training / evaluation
            summary); default one metric per line (``python -m ovisnet.evaluation``).

    Returns:
        The table, without a trailing newline.
    """
    shown = [k for k in (metrics if keys is None else keys) if k in metrics]
    scale = 1.0 if percent else 100.0
    cells = {k: NOT_AVAILABLE if metrics[k] < 0 else f"{scale * metrics[k]:.2f}" for k in shown}
    if one_row:
        lines = [" ".join(f"{k:>7}" for k in shown), " ".join(f"{cells[k]:>7}" for k in shown)]
    else:
        header = ("metric", "value (%)")
        width = max([len(header[0]), *(len(k) for k in shown)])
        lines = [f"{header[0]:<{width}}  {header[1]}", f"{'-' * width}  {'-' * len(header[1])}"]
        lines += [f"{k:<{width}}  {cells[k]:>{len(header[1])}}" for k in shown]
    return "\n".join([title, *lines] if title else lines)

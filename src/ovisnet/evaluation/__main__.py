"""Command line: ``python -m ovisnet.evaluation GT.json RESULTS.json [--json OUT]``.

Prints the metric table in percent; ``--json`` also writes the metrics (fractions) to a file.
RESULTS may be a ``results.json`` or the ``results.zip`` that holds it. Warnings (results of a
category that is not in the ground truth, ignored) go to stderr as ``warning: ...`` lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ovisnet.evaluation.table import format_metrics_table
from ovisnet.evaluation.vis_eval import EvaluationError, evaluate_results


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a results file against a ground-truth file and print the table.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: 0 on success, 2 on malformed input.
    """
    parser = argparse.ArgumentParser(
        prog="python -m ovisnet.evaluation",
        description="OVIS / YouTube-VIS video mask AP with the official rules.",
    )
    parser.add_argument("gt", type=Path, help="ground-truth annotation JSON")
    parser.add_argument("results", type=Path, help="results.json (or results.zip)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the metrics here")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics = evaluate_results(args.gt, args.results)
    except (EvaluationError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(format_metrics_table(metrics))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

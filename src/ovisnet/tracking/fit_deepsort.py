"""``python -m ovisnet.tracking.fit_deepsort TRAIN.json``: DeepSORT's motion noise for a dataset.

Prints how much of the true re-detections of the split's ground truth DeepSORT's χ² gate admits
at each multiple of DeepSORT's noise, then the smallest multiple reaching the coverage as
``system.tracker.std_*`` overrides for ``tracker=deepsort`` (see
:func:`ovisnet.tracking.deepsort.fit_noise_scale`).
"""

from __future__ import annotations

import argparse

from ovisnet.tracking.deepsort import annotation_tracks, fit_noise_scale, noise_overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ovisnet.tracking.fit_deepsort",
        description="Fit DeepSORT's motion noise to a training split: the smallest multiple of "
        "DeepSORT's noise whose χ² gate admits COVERAGE of the true re-detections; prints the "
        "tracker overrides.",
    )
    parser.add_argument("annotations", help="annotation JSON of a training split")
    parser.add_argument("--coverage", type=float, default=0.95)
    args = parser.parse_args(argv)
    scale, coverages = fit_noise_scale(annotation_tracks(args.annotations), args.coverage)
    for s, c in coverages.items():
        print(f"noise x{s:g}: the gate admits {100 * c:.1f} % of the true re-detections")
    print(" ".join(f"system.tracker.{k}={v:g}" for k, v in noise_overrides(scale).items()))


if __name__ == "__main__":
    main()

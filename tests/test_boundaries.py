"""Architecture rules: the core packages never pull in Lightning or Hydra."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = [
    "ovisnet",
    "ovisnet.data",
    "ovisnet.structures",
    "ovisnet.evaluation",
    "ovisnet.ops.correlation",
    "ovisnet.models",
    "ovisnet.tracking",
    "ovisnet.models.stemseg",
    "ovisnet.tracking.clip_predictor",
    "ovisnet.data.image_clips",
]


@pytest.mark.parametrize("module", CORE)
def test_core_modules_do_not_import_lightning_or_hydra(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'hydra')); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

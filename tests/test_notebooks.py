"""The notebooks under notebooks/ run top to bottom on tiny data and show what they claim.

Each notebook has a code cell tagged ``parameters`` with human defaults (the repository's data
folder); the test inserts a cell after it that points the notebook at a temporary folder and
shrinks the sizes (papermill's convention), executes it with nbclient in the ``python3`` kernel
(ipykernel's kernelspec inside the virtualenv, which runs the interpreter that runs pytest), and
checks the outputs of the cells tagged for it. The committed notebooks carry no outputs.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# the tiny synthetic set of tests/conftest.py: 3 train videos, 1 valid video, 5 frames of 96x64
TINY_SET = "dict(seed=3, num_videos=4, num_frames=5, size=[96, 64], valid_fraction=0.25)"
# tests/conftest.py's tiny_train_overrides (the MaskTrack family's part), narrower still: the
# notebook's mechanics, not the model, are under test here
TINY_MODEL = [
    "model/backbone=timm_fpn",
    "model.backbone.name=resnet10t",
    "model.backbone.out_channels=32",
    "model.calibration.hidden_channels=16",
    "model.rpn.pre_nms_top_n=50",
    "model.rpn.post_nms_top_n=50",
    "model.rcnn.detections_per_img=10",
    "model.rcnn.representation_size=64",
    "model.rcnn.mask_channels=16",
    "model.rcnn.score_thresh=0.05",
]
# one OpenMP thread in the kernel: on a 2-core machine shared with other processes (pytest-xdist,
# CI neighbours) two spinning threads per process made a tiny training step 4-8x slower
KERNEL_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _execute(name: str, parameters: str, workdir: Path) -> nbformat.NotebookNode:
    """Run ``notebooks/<name>`` with ``parameters`` injected after its ``parameters`` cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(parameters, id="injected-parameters")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=KERNEL_ENV)
    return nb


def _tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if tag in c.metadata.get("tags", []))


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def _ap_row(text: str) -> dict[str, float | None]:
    """The printed one-row AP table (header line, values line); None where it says n/a."""
    lines = text.strip().splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["AP", "AP50"])
    keys, values = lines[head].split(), lines[head + 1].split()
    return {k: None if v == "n/a" else float(v) for k, v in zip(keys, values, strict=True)}


def test_the_python3_kernel_is_the_virtualenvs():
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    # ipykernel's own spec, installed with it under sys.prefix: no manual registration needed;
    # its argv[0] "python" is replaced by sys.executable when the kernel starts
    assert Path(spec.resource_dir).resolve().is_relative_to(Path(sys.prefix).resolve())
    assert spec.argv[0] in ("python", "python3", sys.executable)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], f"{path.name}: cell {cell.id} has outputs"
        assert cell.execution_count is None, f"{path.name}: cell {cell.id} has a count"
    tags = [c.metadata.get("tags", []) for c in code]
    assert sum("parameters" in t for t in tags) == 1  # where the test injects its values


def test_the_notebooks_are_the_two_walkthroughs():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["dataset_walkthrough.ipynb", "inference_walkthrough.ipynb"]


def test_dataset_walkthrough_runs_and_reports_the_library_statistics(tmp_path):
    from ovisnet.data.annotations import load_annotations
    from ovisnet.stats import collect_samples, compute_stats

    data = tmp_path / "data"  # absent: the notebook generates the set
    nb = _execute(
        "dataset_walkthrough.ipynb",
        f"DATA_DIR = Path({str(data)!r})\nGENERATE = {TINY_SET}\nMAX_FRAMES = 3",
        tmp_path,
    )
    assert (data / "annotations" / "valid.json").is_file()
    train = load_annotations(data / "annotations" / "train.json")
    stats = compute_stats(train)
    assert stats["videos"] == 3 and stats["mbor"] is not None
    table = _text(_tagged(nb, "stats-table"))
    mbor = re.search(r"mBOR\s+([0-9.]+) over (\d+) frames with objects", table)
    assert mbor is not None, table
    assert float(mbor.group(1)) == pytest.approx(stats["mbor"], abs=5e-4)
    assert int(mbor.group(2)) == stats["frames_with_objects"]
    assert re.search(r"videos\s+3\n", table) and re.search(rf"masks\s+{stats['masks']}\n", table)
    # the hand-computed BOR example and the per-level label counts
    text = "".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "BOR of two half-overlapping boxes: 0.333" in text
    counts = collect_samples(train).occlusion_counts
    assert sum(counts.values()) == stats["masks"] > 0
    assert f"occlusion labels per level: {counts}" in text
    histograms = _tagged(nb, "histograms")
    assert _images(histograms) == 1
    written = sorted(p.name for p in (data / "stats" / "train").glob("*.png"))
    assert {"bor.png", "occlusion_levels.png", "objects_per_frame.png"} <= set(written)
    assert _images(_tagged(nb, "frames")) == 1
    assert sum(_images(c) for c in nb.cells if c.cell_type == "code") >= 4


def test_inference_walkthrough_trains_streams_draws_and_scores(tmp_path):
    from ovisnet.evaluation import evaluate_results

    data, out = tmp_path / "data", tmp_path / "run"
    params = (
        f"DATA_DIR = Path({str(data)!r})\n"
        f"SYNTHETIC = {TINY_SET}\n"
        "MAX_SIZE = [96, 64]\n"
        "TRAIN_STEPS = 2\n"
        f"OVERRIDES = {TINY_MODEL!r}\n"
        f"OUTPUT_DIR = Path({str(out)!r})\n"
        "MAX_TRACKS = 3\n"
        "MAX_FRAMES = 3"
    )
    nb = _execute("inference_walkthrough.ipynb", params, tmp_path)
    # the one video streamed by hand equals the validation loop's entries for it
    stream = _text(_tagged(nb, "stream"))
    assert "same entries as the validation loop: True" in stream, stream
    assert _images(_tagged(nb, "overlay")) == 1
    # the printed table is the evaluator's verdict on the written results.json
    results = out / "results" / "val_epoch000" / "results.json"
    assert json.loads(results.read_text())  # tracks were written: the checks are not vacuous
    printed = _ap_row(_text(_tagged(nb, "ap-table")))
    expected = evaluate_results(
        data / "annotations" / "valid.json", json.loads(results.read_text())
    )
    assert set(printed) >= {"AP", "AP50", "AP75", "AR1", "AR10", "AP_SO", "AP_MO", "AP_HO"}
    for key, value in printed.items():
        if value is None:  # no ground truth in that setting
            assert expected[key] == -1.0, key
        else:
            assert value == pytest.approx(100.0 * expected[key], abs=0.006), key
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (out / ".hydra" / "config.yaml").is_file()

    # the checkpoint branch: the saved run is rebuilt from its config and validates the same
    again = _execute(
        "inference_walkthrough.ipynb",
        f"CKPT_PATH = {str(ckpt)!r}\nOUTPUT_DIR = Path({str(tmp_path / 'eval')!r})\n"
        "MAX_TRACKS = 3\nMAX_FRAMES = 3",
        tmp_path,
    )
    assert "same entries as the validation loop: True" in _text(_tagged(again, "stream"))
    rescored = tmp_path / "eval" / "results" / "val_epoch000" / "results.json"
    assert json.loads(rescored.read_text()) == json.loads(results.read_text())
    assert _ap_row(_text(_tagged(again, "ap-table"))) == printed

"""A newcomer's first errors name the fix: one line, no traceback; and the AP table says n/a."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

import ovisnet.train as train_module
from ovisnet.errors import EXIT_STATUS, ConfigError, MissingFileError, report_user_errors
from ovisnet.eval import main as eval_main
from ovisnet.evaluation import format_metrics_table
from ovisnet.lit.system import METRIC_KEYS
from ovisnet.train import CONFIG_DIR, check_accelerator, train

REPO = Path(CONFIG_DIR).parent
README_SECTIONS = {
    line[3:].strip()
    for line in (REPO / "README.md").read_text().splitlines()
    if line.startswith("## ")
}


def _train_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m ovisnet.train args`` in ``cwd``, without a GPU and without any data root."""
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_ROOT")}
    return subprocess.run(
        [sys.executable, "-m", "ovisnet.train", *args],
        cwd=cwd,
        env={**clean, "CUDA_VISIBLE_DEVICES": "", "HYDRA_FULL_ERROR": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == EXIT_STATUS, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="Lightning's gpu is MPS here")
def test_gpu_recipe_without_a_gpu_names_the_cpu_trainer(tmp_path):
    line = _one_line(_train_cli(["experiment=cmasktrack"], tmp_path))
    assert line.startswith("ovisnet.train: no GPU found")
    assert "trainer=cpu" in line and "make train" in line


def test_missing_ovis_names_the_root_setting_and_the_readme_section(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_line(
        _train_cli(["experiment=cmasktrack", "trainer=cpu"], tmp_path, OVIS_ROOT=str(empty))
    )
    assert line.startswith(
        f"ovisnet.train: annotation file not found: {empty}/annotations/annotations_train.json."
    )
    assert "data.root=" in line and "OVIS_ROOT" in line
    assert (
        '"Using a real OVIS download"' in line and "Using a real OVIS download" in README_SECTIONS
    )
    assert not list(empty.iterdir())  # nothing was generated or downloaded


def test_missing_own_data_names_its_variable_and_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VIS_ROOT", raising=False)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=cmasktrack", "trainer=cpu", "data=custom", "paths.output_dir=x"],
        )
    with pytest.raises(MissingFileError, match="VIS_ROOT") as caught:
        train(cfg)
    assert isinstance(caught.value, FileNotFoundError)
    assert '"Train on your own videos"' in str(caught.value)
    assert "Train on your own videos" in README_SECTIONS
    assert not (tmp_path / "x").exists()  # stopped before anything was built


def test_more_devices_than_gpus_names_the_device_count(monkeypatch):
    monkeypatch.setattr(train_module, "gpus_available", lambda accelerator: 1)
    trainer = OmegaConf.create({"accelerator": "gpu", "devices": 4})
    with pytest.raises(
        ConfigError,
        match=r"trainer.devices=4, but this machine has 1 GPU\(s\). Add trainer.devices=1",
    ):
        check_accelerator(trainer, "fix")
    check_accelerator(OmegaConf.create({"accelerator": "gpu", "devices": 1}), "fix")
    monkeypatch.setattr(train_module, "gpus_available", lambda accelerator: 0)
    with pytest.raises(
        ConfigError, match=r"no GPU found, .*\(trainer.accelerator=cuda\). the fix$"
    ):
        check_accelerator(OmegaConf.create({"accelerator": "cuda", "devices": 1}), "the fix")
    check_accelerator(OmegaConf.create({"accelerator": "cpu", "devices": 2}), "fix")


def _missing(_: str) -> str:
    raise MissingFileError("no file; do that")


OmegaConf.register_new_resolver("test_first_errors.missing", _missing, replace=True)


def test_user_errors_are_found_inside_hydra_and_omegaconf_wrappers(capsys):
    def wrapped_by_instantiate() -> None:
        try:
            raise ConfigError("bad\nsetting;  do this")
        except ConfigError as e:
            raise InstantiationException("Error in call to target") from e

    def wrapped_by_a_resolver() -> None:  # OmegaConf chains it as __context__
        OmegaConf.resolve(OmegaConf.create({"a": "${test_first_errors.missing:x}"}))

    for fn, expected in [
        (wrapped_by_instantiate, "prog: bad setting; do this"),
        (wrapped_by_a_resolver, "prog: no file; do that"),
    ]:
        with pytest.raises(SystemExit) as exit_info, report_user_errors("prog"):
            fn()
        assert exit_info.value.code == EXIT_STATUS
        assert capsys.readouterr().err == expected + "\n"
    with pytest.raises(ValueError, match="unexpected"), report_user_errors("prog"):
        raise ValueError("unexpected")  # anything else keeps its traceback
    assert capsys.readouterr().err == ""


def test_eval_reports_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_main([f"ckpt_path={tmp_path / 'nope.ckpt'}"])
    assert exit_info.value.code == EXIT_STATUS
    assert (
        capsys.readouterr().err
        == f"ovisnet.eval: checkpoint {tmp_path / 'nope.ckpt'} does not exist\n"
    )


def test_table_shows_na_where_a_group_has_no_ground_truth():
    percent = {
        "AP": 12.345,
        "AP50": 30.0,
        "AP75": -100.0,
        "AR1": 0.0,
        "AR10": 5.5,
        "AP_SO": 1.0,
        "AP_MO": -100.0,
        "AP_HO": 100.0,
        "APs": 3.0,
    }
    table = format_metrics_table(percent, METRIC_KEYS, title="t:", percent=True, one_row=True)
    assert table.splitlines() == [
        "t:",
        "     AP    AP50    AP75     AR1    AR10   AP_SO   AP_MO   AP_HO",
        "  12.35   30.00     n/a    0.00    5.50    1.00     n/a  100.00",
    ]
    assert "-100" not in table and "APs" not in table
    fractions = {"AP": 0.5, "APm": -1.0, "AR1": 0.25}
    lines = format_metrics_table(fractions).splitlines()
    assert lines == [
        "metric  value (%)",
        "------  ---------",
        "AP          50.00",
        "APm           n/a",
        "AR1         25.00",
    ]

# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
The ``monai-sacb`` command line: ``register`` of a pair on different grids writes every output on the fixed grid,
``apply`` of the written ITK field reproduces the warped image, user errors exit with code 2 and a one-line
message naming the file, every subcommand has ``--help``. Tiny: 32^3 volumes, a randomly initialised network, no
instance optimisation; the commands run in this process through ``main`` (one console-script run checks the entry
point).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_sacb import cli
from monai_sacb.cli import EXIT_USER_ERROR, UserError, main, train_configs, user_error

pytest.importorskip("itk")

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
LPS_AFFINE = np.array(  # LPS-oriented (x and y axes reversed), anisotropic 1.8 x 2.2 x 2.5 mm
    [[-1.8, 0.0, 0.0, 28.0], [0.0, -2.2, 0.0, 34.0], [0.0, 0.0, 2.5, -40.0], [0.0, 0.0, 0.0, 1.0]]
)
RAS_AFFINE = np.array(  # RAS, 2 mm isotropic, another field of view
    [[2.0, 0.0, 0.0, -31.0], [0.0, 2.0, 0.0, -33.0], [0.0, 0.0, 2.0, -30.0], [0.0, 0.0, 0.0, 1.0]]
)
FAST = ["--io-steps", "0", "--device", "cpu", "--set", "network_def#kmeans_iters=3"]


def _blob(affine: np.ndarray, centre_mm, sigma_mm, shape=(32, 32, 32)) -> np.ndarray:
    """A smooth blob at a world position (RAS mm): the same anatomy whatever the grid."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    return np.exp(-(((world - centre_mm) / sigma_mm) ** 2).sum(-1) / 2).astype(np.float32)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict:
    """A moving image (RAS, 2 mm) with its label, a fixed image (LPS, anisotropic), a random tiny network."""
    folder = tmp_path_factory.mktemp("pair")
    moving = _blob(RAS_AFFINE, (2.0, -1.0, 3.0), (9.0, 12.0, 8.0))
    fixed = _blob(LPS_AFFINE, (-1.0, 2.0, 1.0), (11.0, 10.0, 9.0))
    paths = {"moving": folder / "mov.nii.gz", "fixed": folder / "fix.nii.gz", "label": folder / "mov_seg.nii.gz"}
    nib.save(nib.Nifti1Image(moving, RAS_AFFINE), paths["moving"])
    nib.save(nib.Nifti1Image(fixed, LPS_AFFINE), paths["fixed"])
    nib.save(nib.Nifti1Image((moving > 0.3).astype(np.int16) + (moving > 0.7), RAS_AFFINE), paths["label"])
    from monai_sacb.networks import SACBNetBackbone

    torch.manual_seed(0)
    network = SACBNetBackbone(spatial_dims=3, in_channels=2, base_channels=4, num_clusters=7)
    paths["model"] = folder / "model.pt"
    torch.save(network.state_dict(), paths["model"])
    return {k: str(v) for k, v in paths.items()}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def registered(pair, tmp_path_factory) -> dict:
    """``monai-sacb register`` of the pair (intensities unscaled, so that ``apply`` can be compared directly)."""
    out = tmp_path_factory.mktemp("registered")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(
            ["register", pair["moving"], pair["fixed"], "-o", str(out), "--moving-label", pair["label"],
             "--model", pair["model"], "--intensity", "none", *FAST]
        )  # fmt: skip
    stem = "mov_to_fix"
    return {
        "code": code,
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "dir": out,
        "warped": out / f"{stem}_warped.nii.gz",
        "label": out / f"{stem}_warped_label.nii.gz",
        "ddf": out / f"{stem}_ddf.nii.gz",
        "itk": out / f"{stem}_itk_displacement.nii.gz",
    }


# -------------------------------------------------------------------------------------------------- register


def test_register_writes_every_output_on_the_fixed_grid(registered, pair):
    assert registered["code"] == 0, registered["stderr"]
    written = sorted(p.name for p in registered["dir"].iterdir())
    assert written == sorted(registered[k].name for k in ("warped", "label", "ddf", "itk"))
    fixed = nib.load(pair["fixed"])
    for key in ("warped", "label", "ddf", "itk"):
        image = nib.load(registered[key])
        np.testing.assert_allclose(image.affine, fixed.affine, atol=1e-4, err_msg=key)
        assert image.shape[:3] == fixed.shape, key
        assert str(registered[key]) in registered["stdout"], key  # the summary lists every file by path
    assert nib.load(registered["ddf"]).shape == (*fixed.shape, 3)
    assert nib.load(registered["itk"]).shape == (*fixed.shape, 1, 3)  # an ITK vector image
    label = np.asarray(nib.load(registered["label"]).dataobj)
    assert set(np.unique(label).tolist()) <= {0, 1, 2}  # nearest neighbour: no new values
    assert "[1/1] mov.nii.gz -> fix.nii.gz: registered in" in registered["stderr"]  # per-pair progress
    assert registered["stdout"].startswith("done in")


def test_ddf_and_itk_field_follow_the_documented_conventions(registered, pair):
    """ddf: voxels of the fixed grid, channel i along array axis i; ITK field: the same vectors in LPS mm."""
    ddf = nib.load(registered["ddf"]).get_fdata()
    assert np.abs(ddf).mean() > 0.1  # the random network does move: the comparison below is not 0 == 0
    world_ras = ddf @ LPS_AFFINE[:3, :3].T
    itk_field = nib.load(registered["itk"]).get_fdata()[:, :, :, 0, :]
    np.testing.assert_allclose(itk_field, world_ras * [-1.0, -1.0, 1.0], atol=1e-3)


# -------------------------------------------------------------------------------------------------- apply


def test_apply_of_the_itk_field_reproduces_the_warped_image(registered, pair, tmp_path, capsys):
    out = tmp_path / "applied.nii.gz"
    code, stdout, err = _run(capsys, "apply", registered["itk"], pair["moving"], "-o", out)
    assert code == 0, err
    assert str(out) in stdout
    applied, warped = nib.load(out), nib.load(registered["warped"])
    np.testing.assert_allclose(applied.affine, warped.affine, atol=1e-4)
    a, w = applied.get_fdata(), warped.get_fdata()
    # the bundle interpolates twice (moving -> fixed grid, then the warp), ITK once: close, not equal
    assert np.abs(a - w).mean() < 5e-3 and np.abs(a - w).max() < 0.1, (np.abs(a - w).mean(), np.abs(a - w).max())
    assert w.max() > 0.5  # the blob is inside the fixed field of view

    # the same on an explicit reference grid (the fixed image), and a label by nearest neighbour
    label_out = tmp_path / "label.nii.gz"
    code, _, err = _run(
        capsys, "apply", registered["itk"], pair["label"], "-o", label_out, "--nearest", "--reference", pair["fixed"]
    )
    assert code == 0, err
    label = nib.load(label_out)
    assert label.get_data_dtype() == np.int16
    expected = np.asarray(nib.load(registered["label"]).dataobj)
    assert (np.asarray(label.dataobj) == expected).mean() > 0.97


# -------------------------------------------------------------------------------------------------- user errors


def _user_error(capsys, *argv) -> str:
    code, _, err = _run(capsys, *argv)
    assert code == EXIT_USER_ERROR, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_files_exit_2_naming_the_file(pair, tmp_path, capsys):
    missing = tmp_path / "nowhere.nii.gz"
    line = _user_error(capsys, "register", missing, pair["fixed"], "-o", tmp_path / "out", *FAST)
    assert line == f"monai-sacb register: error: MOVING: file not found: {missing}"
    line = _user_error(capsys, "register", pair["moving"], pair["fixed"], "-o", tmp_path / "out", "--model", missing)
    assert "--model" in line and str(missing) in line
    line = _user_error(capsys, "apply", missing, pair["moving"], "-o", tmp_path / "a.nii.gz")
    assert "TRANSFORM" in line and str(missing) in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_unreadable_and_unusable_images_exit_2_naming_the_file(pair, tmp_path, capsys):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    model = ["--model", pair["model"], *FAST]
    line = _user_error(capsys, "register", broken, pair["fixed"], "-o", tmp_path / "out", *model)
    assert "cannot read" in line and str(broken) in line  # LoadPaird's message, through MONAI's wrappers
    flat = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.float32), np.eye(4)), flat)
    line = _user_error(capsys, "register", pair["moving"], flat, "-o", tmp_path / "out", *model)
    assert "is 2D" in line and str(flat) in line  # CheckInputsd's message
    line = _user_error(
        capsys, "register", pair["moving"], pair["fixed"], "-o", tmp_path / "out", "--moving-label", pair["fixed"],
        "--model", pair["model"], *FAST,
    )  # fmt: skip
    assert "is not a label map" in line and pair["fixed"] in line


def test_output_folders_below_a_file_exit_2_in_the_clis_own_spelling(pair, tmp_path, capsys):
    """Before this check `register -o FILE/out` was reported as an internal error (NotADirectoryError)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for argv, option in (
        (["register", pair["moving"], pair["fixed"], "-o", blocker / "out", *FAST], "-o"),
        (["evaluate", "--output-dir", blocker / "out"], "--output-dir"),
        (["train", "--ckpt-dir", blocker / "out"], "--ckpt-dir"),
        (["train", "--output-dir", blocker / "out"], "--output-dir"),
    ):
        line = _user_error(capsys, *argv)
        assert line == (
            f"monai-sacb {argv[0]}: error: {option} '{blocker / 'out'}' ({blocker} is a file, not a folder): "
            "give a folder this process can create or write to."
        )


def test_apply_refuses_a_monai_ddf_as_transform(registered, pair, tmp_path, capsys):
    line = _user_error(capsys, "apply", registered["ddf"], pair["moving"], "-o", tmp_path / "a.nii.gz")
    assert str(registered["ddf"]) in line and "displacement field" in line


def test_bad_options_exit_2(pair, tmp_path, capsys):
    for argv in (
        ["register", pair["moving"], pair["fixed"], "-o", tmp_path, "--io-steps", "-1"],
        ["register", pair["moving"], pair["fixed"], "-o", tmp_path, "--spacing", "0"],
        ["register", pair["moving"], pair["fixed"], "-o", tmp_path, "--device", "gpu7"],
        ["register", pair["moving"], pair["fixed"]],  # no -o
        ["train", "--max-epochs", "zero"],
        ["frobnicate"],
    ):
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in argv])
        assert info.value.code == EXIT_USER_ERROR, argv
        assert "error:" in capsys.readouterr().err
    line = _user_error(capsys, "register", pair["moving"], pair["fixed"], "-o", tmp_path, "--set", "no_such_key=1")
    assert "no_such_key" in line
    line = _user_error(capsys, "train", "--data-format", "nifti_soup")
    assert "nifti_soup" in line and "lpba40" in line


def test_bundle_folder_not_found_says_what_to_do(pair, tmp_path, capsys, monkeypatch):
    line = _user_error(capsys, "register", pair["moving"], pair["fixed"], "-o", tmp_path, "--bundle-dir", tmp_path)
    assert "--bundle-dir" in line and "configs" in line
    monkeypatch.setattr(cli, "PACKAGE_DIR", tmp_path / "site-packages" / "monai_sacb")  # a non-editable install
    line = _user_error(capsys, "register", pair["moving"], pair["fixed"], "-o", tmp_path)
    assert "--bundle-dir" in line and "pip install -e ." in line


def test_evaluate_without_evaluate_json_says_so(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    line = _user_error(capsys, "evaluate", "--bundle-dir", bundle)
    assert "evaluate.json not found" in line


def test_user_error_reads_the_package_message_through_monai_wrappers():
    from monai_sacb.apps import check_data_format

    try:
        try:
            check_data_format("nifti_soup")  # a deliberate check of the package
        except ValueError as error:
            raise RuntimeError("applying transform <...>") from error  # as MONAI wraps it
    except RuntimeError as wrapped:
        found = user_error(wrapped)
    assert isinstance(found, ValueError) and "nifti_soup" in str(found)
    try:
        np.zeros(2).reshape(3)  # a library failure, not a deliberate check: an internal error
    except ValueError as error:
        assert user_error(error) is None
    assert user_error(RuntimeError("never raised")) is None
    assert isinstance(user_error(UserError("y")), UserError)


# -------------------------------------------------------------------------------------------------- train


def test_train_config_list_follows_the_data_format():
    configs = BUNDLE / "configs"
    assert train_configs(BUNDLE, "synth") == [configs / "train.json"]
    assert train_configs(BUNDLE, "default") == [configs / "train.json", configs / "data_default.json"]
    for fmt in ("folder", "json", "learn2reg", "ixi", "lpba40", "LPBA40"):
        assert train_configs(BUNDLE, fmt) == [configs / "train.json", configs / "data_files.json"], fmt


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """``monai-sacb train`` for one iteration on the default data at 8 mm (32^3), into a tmp checkpoint folder."""
    folder = tmp_path_factory.mktemp("train")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(
            ["train", "--data-format", "default", "--dataset-dir", str(folder / "cache"), "--spacing", "8",
             "--max-epochs", "1", "--num-samples", "1", "--ckpt-dir", str(folder / "runs"),
             "--output-dir", str(folder / "tb"), "--device", "cpu", "--set", "num_val_pairs=2",
             "--set", "progress_bar=False", "--set", "network_def#kmeans_iters=3"]
        )  # fmt: skip
    return {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "dir": folder}


def test_train_writes_a_model_that_register_takes(trained, tmp_path, capsys, pair):
    assert trained["code"] == 0, trained["stderr"]
    model = trained["dir"] / "runs" / "model.pt"
    assert model.is_file() and str(model) in trained["stdout"]
    assert f"--model {model}" in trained["stdout"]
    code, _, err = _run(capsys, "register", pair["moving"], pair["fixed"], "-o", tmp_path, "--model", model, *FAST)
    assert code == 0, err


def test_train_from_pretrained_weights(trained, tmp_path, capsys):
    missing = tmp_path / "nowhere.pt"
    line = _user_error(capsys, "train", "--pretrained", missing, "--ckpt-dir", tmp_path / "runs")
    assert line == f"monai-sacb train: error: --pretrained: file not found: {missing}"
    model = trained["dir"] / "runs" / "model.pt"
    code, _, err = _run(
        capsys, "train", "--data-format", "default", "--dataset-dir", trained["dir"] / "cache", "--spacing", "8",
        "--max-epochs", "1", "--num-samples", "1", "--ckpt-dir", tmp_path / "runs", "--output-dir", tmp_path / "tb",
        "--device", "cpu", "--pretrained", model, "--set", "learning_rate=0.0", "--set", "num_val_pairs=2",
        "--set", "progress_bar=False", "--set", "network_def#kmeans_iters=3",
    )  # fmt: skip
    assert code == 0, err
    start = torch.load(model, weights_only=True)
    end = torch.load(tmp_path / "runs" / "checkpoint_epoch=1.pt", weights_only=True)["model"]
    assert all(torch.equal(end[k], v) for k, v in start.items())  # learning rate 0: the pretrained weights kept


def test_evaluate_reports_each_pair_and_lists_its_files(trained, tmp_path, capsys):
    if not (BUNDLE / "configs" / "evaluate.json").is_file():
        pytest.skip("this bundle has no evaluate.json")
    out = tmp_path / "evaluation"
    code, stdout, err = _run(
        capsys, "evaluate", "--data-format", "default", "--dataset-dir", trained["dir"] / "cache", "--spacing", "8",
        "--num-pairs", "2", "--io-steps", "0", "--model", trained["dir"] / "runs" / "model.pt", "--output-dir", out,
        "--device", "cpu", "--set", "network_def#kmeans_iters=3",
    )  # fmt: skip
    assert code == 0, err
    assert "[1/2] " in err and "[2/2] " in err
    listed = [Path(line.split()[0]) for line in stdout.splitlines() if line.startswith("  ")]
    assert listed and all(p.is_file() and out in p.parents for p in listed)


# -------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command, phrases",
    [
        (None, ["register", "apply", "evaluate", "train", "exit codes"]),
        ("register", ["warped(p) = moving(p + ddf(p))", "voxels of the fixed", "LPS millimetres", "3D Slicer"]),
        ("apply", ["LPS mm", "--nearest", "--reference", "antsApplyTransforms"]),
        ("evaluate", ["--data-format", "--num-pairs", "--io-steps"]),
        ("train", ["data_files.json", "data_default.json", "--no-resume"]),
    ],
)
def test_help_of_every_subcommand(command, phrases, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"] if command else ["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in phrases:
        assert " ".join(phrase.split()) in text, phrase


def test_console_script_and_module_entry_points():
    result = subprocess.run([sys.executable, "-m", "monai_sacb", "apply", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: monai-sacb apply" in result.stdout
    script = shutil.which("monai-sacb")
    if script is None:
        pytest.skip("the package is not installed (pip install -e .): no console script")
    result = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("monai-sacb ")


@pytest.mark.parametrize("command", ["register", "evaluate"])
def test_no_crop_registers_the_whole_grid(command, pair, tmp_path, capsys, monkeypatch):
    """--no-crop turns the bundle's foreground crop off (crop_foreground False); without it the config's default holds."""
    import monai_sacb.cli as cli

    seen = []

    def fake_run(bundle, configs, overrides, *args, **kwargs):
        seen.append(dict(overrides))
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / f"written_{len(seen)}.nii.gz").write_bytes(b"")

    monkeypatch.setattr(cli, "run_workflow", fake_run)
    if command == "register":
        argv = ["register", pair["moving"], pair["fixed"], "-o", str(tmp_path / "out"), "--model", pair["model"]]
    else:
        argv = ["evaluate", "--model", pair["model"], "--output-dir", str(tmp_path / "out")]
    _run(capsys, *argv)
    _run(capsys, *argv, "--no-crop")
    assert len(seen) == 2
    assert seen[0].get("crop_foreground", True) is True
    assert seen[1]["crop_foreground"] is False


def test_register_suggests_2_mm_for_fine_voxels_with_the_shipped_weights(pair, tmp_path, capsys, monkeypatch):
    """A 1 mm FIXED with the shipped weights and no --spacing gets a note naming --spacing 2; otherwise no note."""
    import monai_sacb.cli as cli

    def fake_run(bundle, configs, overrides, *args, **kwargs):
        Path(overrides["output_dir"], "written.nii.gz").write_bytes(b"")

    monkeypatch.setattr(cli, "run_workflow", fake_run)
    fine = tmp_path / "fine.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.diag([1.0, 1.0, 1.2, 1.0])), fine)
    shipped = ["register", pair["moving"], fine, "-o", tmp_path / "a"]
    code, _, err = _run(capsys, *shipped)
    assert code == 0 and "1x1x1.2 mm voxels" in err and "--spacing 2" in err
    for extra in (["--spacing", "2"], ["--model", pair["model"]]):
        code, _, err = _run(capsys, *shipped, *extra)
        assert code == 0 and "note:" not in err
    code, _, err = _run(capsys, "register", pair["moving"], pair["fixed"], "-o", tmp_path / "b")  # 1.8 mm voxels
    assert code == 0 and "note:" not in err

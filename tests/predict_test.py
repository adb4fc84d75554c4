"""Predict CLI and library: slices (TIFF, PNG, NPY), a NIfTI volume of known lung volume, bad
inputs, and outputs that never collide nor replace a file unasked.

The model here is an export of a known function (lung = darker than -600 HU), so the
expected masks are exact and the checks test the pipeline: reading, windowing,
resizing in and out, batching, geometry, measurements and writing.
"""

import io
import json
import logging
import os
import re
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile

from conftest import REPO
from lungseg_jax.core import progress
from lungseg_jax.data import preprocess
from lungseg_jax.serving import export, exported, inference, predict, scans

try:
    import nibabel
except ImportError:  # the [nifti] extra; only the NIfTI tests need it
    nibabel = None

HU_WINDOW = (-1350.0, 150.0)
SIZE = 32
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
needs_nibabel = pytest.mark.skipif(nibabel is None, reason='NIfTI volumes need nibabel: '
                                   'pip install -e ".[nifti]"')


def below(hu_cutoff):
    """Probability of 'lung' for windowed inputs: a steep sigmoid below ``hu_cutoff``."""
    cutoff = (hu_cutoff - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0])
    return lambda images: jax.nn.sigmoid(200.0 * (cutoff - images[..., 0]))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export"))
    export.write_export(out, {1: below(-650.0), 2: below(-550.0)}, (SIZE, SIZE, 1),
                        {"hu_min": HU_WINDOW[0], "hu_max": HU_WINDOW[1], "threshold": 0.5},
                        platforms=("cpu",))
    return out


@pytest.fixture(scope="module")
def model(model_dir):
    return exported.ExportedModel(model_dir)


def lungs_2d(height, width):
    """A body (40 HU) filling the slice with two elliptic lungs (-850 HU); (HU, mask)."""
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), bool)
    for cx in (0.3 * width, 0.7 * width):
        mask |= ((yy - height / 2) / (0.35 * height)) ** 2 + ((xx - cx) / (0.15 * width)) ** 2 <= 1
    image = np.where(mask, -850.0, 40.0) + np.random.default_rng(0).normal(0, 10, mask.shape)
    return image.astype(np.int16), mask


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def run_predict(model_dir, output, *args):
    """``python -m lungseg_jax.predict --model=MODEL_DIR --output=OUTPUT ARGS...``."""
    return subprocess.run([sys.executable, "-m", "lungseg_jax.predict", f"--model={model_dir}",
                           f"--output={output}", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def error_lines(run):
    return [line for line in run.stderr.splitlines() if line.startswith("error: ")]


def test_slices_in_each_format_give_masks_in_that_format(model, tmp_path):
    image, truth = lungs_2d(90, 70)
    tifffile.imwrite(tmp_path / "a.tif", image, resolution=(10 / 0.6, 10 / 0.6),
                     resolutionunit="CENTIMETER")
    np.save(tmp_path / "b.npy", image)
    cv2.imwrite(str(tmp_path / "c.png"),
                np.rint(preprocess.window(image, *HU_WINDOW) * 255).astype(np.uint8))
    out = tmp_path / "out"
    results = {name: predict.predict_file(model, str(tmp_path / name), str(out), batch_size=4)
               for name in ("a.tif", "b.npy", "c.png")}
    masks = {"a.tif": tifffile.imread(out / "a_mask.tif") > 0,
             "b.npy": np.load(out / "b_mask.npy").astype(bool),
             "c.png": cv2.imread(str(out / "c_mask.png"), cv2.IMREAD_UNCHANGED) > 0}
    for name, mask in masks.items():
        assert mask.shape == truth.shape, name
        assert iou(mask, truth) > 0.9, name
        assert results[name]["lung_pixels"] == mask.sum()
    np.testing.assert_array_equal(masks["a.tif"], masks["b.npy"])  # same HU values
    assert set(np.unique(tifffile.imread(out / "a_mask.tif"))) == {0, 255}
    # Spacing: from the TIFF's resolution tags (cm), and written back with the mask.
    assert results["a.tif"]["pixel_spacing_mm"] == pytest.approx((0.6, 0.6))
    assert results["a.tif"]["lung_area_mm2"] == pytest.approx(masks["a.tif"].sum() * 0.36)
    assert results["b.npy"]["lung_area_mm2"] is None
    assert predict.read_scan(str(out / "a_mask.tif"), HU_WINDOW).spacing_mm == \
        pytest.approx((0.6, 0.6))
    with open(out / "a.json") as f:
        assert json.load(f)["lung_pixels"] == results["a.tif"]["lung_pixels"]


@needs_nibabel
def test_nifti_volume_of_known_lung_volume(model, tmp_path):
    shape, zooms = (44, 52, 9), (0.8, 0.7, 2.5)  # (x, y, z) voxels, mm
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    truth = np.zeros(shape, bool)
    for cx in (0.3 * shape[0], 0.7 * shape[0]):
        truth |= (((x - cx) / (0.16 * shape[0])) ** 2
                  + ((y - shape[1] / 2) / (0.35 * shape[1])) ** 2 + ((z - 4) / 5.0) ** 2) <= 1
    hu = np.where(truth, -850, 40).astype(np.int16)
    affine = np.diag([*zooms, 1.0])
    nibabel.save(nibabel.Nifti1Image(hu, affine), tmp_path / "ct.nii.gz")
    result = predict.predict_file(model, str(tmp_path / "ct.nii.gz"), str(tmp_path / "out"),
                                  batch_size=4, uncertainty=True)
    voxel_ml = np.prod(zooms) / 1000
    written = nibabel.load(tmp_path / "out" / "ct_mask.nii.gz")
    mask = np.asarray(written.dataobj).astype(bool)
    assert mask.shape == shape and np.allclose(written.affine, affine)
    assert written.header.get_data_dtype() == np.uint8
    # Known volume, to within the voxels on the lungs' in-plane boundary (resizing there).
    eroded = np.stack([cv2.erode(truth[..., k].astype(np.uint8), np.ones((3, 3))) for k in
                       range(shape[2])], axis=-1).astype(bool)
    boundary_ml = (truth & ~eroded).sum() * voxel_ml
    assert abs(result["lung_volume_ml"] - truth.sum() * voxel_ml) <= boundary_ml
    assert result["lung_volume_ml"] == pytest.approx(mask.sum() * voxel_ml)
    assert result["lung_voxels"] == mask.sum() and result["shape"] == list(shape)
    # The two snapshots disagree only near the lungs' edges.
    spread = np.asarray(nibabel.load(tmp_path / "out" / "ct_uncertainty.nii.gz").dataobj)
    band = np.stack([cv2.dilate(m, np.ones((5, 5))) - cv2.erode(m, np.ones((5, 5))) for m in
                     np.moveaxis(truth.astype(np.uint8), -1, 0)], axis=-1).astype(bool)
    assert spread.shape == shape and spread.max() > 0.2
    assert not np.any((spread > 0.1) & ~band)


def test_segment_stays_consistent_across_batch_sizes(model):
    image, _ = lungs_2d(40, 40)
    slices = np.stack([preprocess.window(image, *HU_WINDOW)] * 5)
    one, _ = predict.segment(model, slices, batch_size=1)
    four, _ = predict.segment(model, slices, batch_size=4)
    np.testing.assert_allclose(one, four, atol=1e-6)


@needs_nibabel
def test_command_line_reports_bad_inputs_and_processes_the_rest(model_dir, tmp_path):
    image, _ = lungs_2d(48, 48)
    np.save(tmp_path / "good.npy", image)
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    (tmp_path / "zero.npy").write_bytes(b"")
    (tmp_path / "scan.bmp").write_bytes(b"BM")
    np.save(tmp_path / "stack.npy", np.zeros((3, 8, 8), np.int16))
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), tmp_path / "flat.nii")
    inputs = [tmp_path / n for n in ("broken.tif", "good.npy", "zero.npy", "scan.bmp",
                                     "stack.npy", "flat.nii", "missing.png")]
    run = run_predict(model_dir, tmp_path / "out", *inputs)
    assert run.returncode == 1
    assert "good.npy: lungs" in run.stdout
    assert os.path.exists(tmp_path / "out" / "good_mask.npy")
    errors = error_lines(run)
    assert len(errors) == 6, run.stderr[-3000:]
    for needle in ("broken.tif: cannot read", "zero.npy: cannot read",
                   "scan.bmp: unsupported format '.bmp'",
                   "stack.npy: expected a 2-D slice, got shape (3, 8, 8)",
                   "flat.nii: expected a 3-D volume", "missing.png: no such file"):
        assert any(needle in e for e in errors), needle
    assert "6 of 7 inputs failed" in run.stderr


def test_an_empty_slice_is_reported_and_the_inputs_after_it_processed(model_dir, tmp_path):
    image, _ = lungs_2d(48, 48)
    np.save(tmp_path / "first.npy", image)
    np.save(tmp_path / "empty.npy", np.zeros((0, 48), np.int16))
    np.save(tmp_path / "last.npy", image)
    out = tmp_path / "out"
    run = run_predict(model_dir, out, *(tmp_path / n for n in ("first.npy", "empty.npy",
                                                                "last.npy")))
    assert run.returncode == 1
    assert error_lines(run) == [f"error: {tmp_path / 'empty.npy'}: empty slice, shape (0, 48)"]
    assert sorted(os.listdir(out)) == ["first.json", "first_mask.npy", "last.json",
                                       "last_mask.npy"]
    assert "1 of 3 inputs failed" in run.stderr


@needs_nibabel
def test_a_volume_with_a_non_finite_voxel_is_refused_naming_its_index_in_the_file(tmp_path):
    hu = np.full((16, 14, 5), 40.0, np.float32)
    hu[12, 10, 3] = np.nan
    hu[2, 1, 4] = np.inf  # first in the file's array order: the one named
    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(hu, np.diag([0.7, 0.7, 2.0, 1.0])), path)
    with pytest.raises(predict.InputError) as error:
        predict.read_scan(str(path), HU_WINDOW)
    assert str(error.value) == f"{path}: non-finite voxel value inf at array index (2, 1, 4)"


def test_inputs_sharing_an_output_name_are_refused_before_any_work(model_dir, tmp_path):
    image, _ = lungs_2d(48, 48)
    np.save(tmp_path / "good.npy", image)
    (tmp_path / "subdir").mkdir()
    first, second = tmp_path / "slice0.tif", tmp_path / "subdir" / "slice0.tif"
    for path in (first, second):
        tifffile.imwrite(path, image)
    out = tmp_path / "out"
    run = run_predict(model_dir, out, tmp_path / "good.npy", first, second)
    assert run.returncode == 1
    errors = error_lines(run)
    assert len(errors) == 1, run.stderr[-3000:]
    assert errors[0].startswith(f"error: {first} and {second} would both write "
                                f"{out / 'slice0_mask.tif'}; ")
    assert not out.exists() and "lungs" not in run.stdout


@pytest.mark.parametrize("first, second, shared", [("a/x.tif", "b/x.tif", "x_mask.tif"),
                                                   ("scan.tif", "scan.npy", "scan.json"),
                                                   ("Scan.npy", "scan.npy", "scan_mask.npy")])
def test_plan_refuses_two_inputs_writing_one_file(tmp_path, first, second, shared):
    out = tmp_path / "out"
    with pytest.raises(predict.OutputError) as error:
        predict.plan_outputs([first, "other.png", second], str(out))
    assert str(error.value).startswith(f"{first} and {second} would both write {out / shared}")


def test_plan_names_each_output_by_the_inputs_stem(tmp_path):
    plan = predict.plan_outputs(["a/x.tif", "ct.nii.gz", "notes.txt"], str(tmp_path), True)
    assert plan == {"a/x.tif": predict.Outputs(str(tmp_path / "x_mask.tif"),
                                               str(tmp_path / "x.json"),
                                               str(tmp_path / "x_uncertainty.tif")),
                    "ct.nii.gz": predict.Outputs(str(tmp_path / "ct_mask.nii.gz"),
                                                 str(tmp_path / "ct.json"),
                                                 str(tmp_path / "ct_uncertainty.nii.gz"))}


def test_an_existing_output_is_replaced_only_with_overwrite(model, model_dir, tmp_path):
    image, _ = lungs_2d(48, 48)
    np.save(tmp_path / "good.npy", image)
    out = tmp_path / "out"
    out.mkdir()
    (out / "good_mask.npy").write_bytes(b"the user's file")
    refused = run_predict(model_dir, out, tmp_path / "good.npy")
    assert refused.returncode == 1
    assert error_lines(refused) == [f"error: {out / 'good_mask.npy'} exists (an output of "
                                    f"{tmp_path / 'good.npy'}); give --overwrite to replace it"]
    assert (out / "good_mask.npy").read_bytes() == b"the user's file"
    assert os.listdir(out) == ["good_mask.npy"]
    replaced = run_predict(model_dir, out, "--overwrite", tmp_path / "good.npy")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    fresh = tmp_path / "fresh"
    predict.predict_file(model, str(tmp_path / "good.npy"), str(fresh))
    np.testing.assert_array_equal(np.load(out / "good_mask.npy"),
                                  np.load(fresh / "good_mask.npy"))
    assert sorted(os.listdir(out)) == ["good.json", "good_mask.npy"]  # no temporary file left


def test_output_in_the_input_folder_keeps_the_users_files(model_dir, tmp_path):
    image, truth = lungs_2d(48, 48)
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_mask.tif", truth.astype(np.uint8))  # the user's own mask
    before = (tmp_path / "a_mask.tif").read_bytes()
    run = run_predict(model_dir, tmp_path, tmp_path / "a.tif")
    assert run.returncode == 1
    assert error_lines(run) == [f"error: {tmp_path / 'a_mask.tif'} exists (an output of "
                                f"{tmp_path / 'a.tif'}); give --overwrite to replace it"]
    assert (tmp_path / "a_mask.tif").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["a.tif", "a_mask.tif"]


def test_plan_refuses_an_output_that_is_an_input_even_with_overwrite(tmp_path):
    inputs = [str(tmp_path / n) for n in ("a.tif", "a_mask.tif")]
    with pytest.raises(predict.OutputError) as error:
        predict.plan_outputs(inputs, str(tmp_path), overwrite=True)
    assert str(error.value) == (f"{inputs[1]}: the output of {inputs[0]} is also an input of "
                                "this call")


def test_a_failed_write_leaves_no_partial_output(model, tmp_path, monkeypatch):
    image, _ = lungs_2d(48, 48)
    np.save(tmp_path / "a.npy", image)

    def crash(path, array):
        with open(path, "wb") as f:
            f.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        predict.predict_file(model, str(tmp_path / "a.npy"), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []


def test_exported_loader_rejects_a_wrong_input_shape(model):
    with pytest.raises(ValueError, match=r"expected \(N, 32, 32, 1\)"):
        model.ensemble(np.zeros((2, 16, 16, 1), np.float32))
    assert jnp.asarray(model.ensemble(np.zeros((3, SIZE, SIZE, 1)))).shape == (3, SIZE, SIZE)


@needs_nibabel
def test_nifti_without_nibabel_names_the_missing_extra(tmp_path, monkeypatch):
    path = tmp_path / "scan.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 8, 2), np.int16), np.eye(4)), path)
    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if not installed
    with pytest.raises(predict.InputError, match=r'scan.nii: .*pip install -e "\.\[nifti\]"'):
        predict.read_scan(str(path), HU_WINDOW)


@pytest.mark.parametrize("flag, message", [("--threshold=1.5", "strictly between 0 and 1"),
                                           ("--batch_size=0", "not a positive integer"),
                                           ("--spacing_mm=-1", "positive pixel spacing")])
def test_command_line_refuses_bad_flag_values(tmp_path, flag, message):
    run = run_predict(tmp_path, tmp_path / "out", flag, "scan.npy")
    assert run.returncode != 0 and message in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_outputs_are_planned_once_per_call(model, tmp_path, monkeypatch):
    image, _ = lungs_2d(48, 48)
    (tmp_path / "folder").mkdir()
    for path in (tmp_path / "a.npy", tmp_path / "folder" / "b.npy", tmp_path / "folder" / "c.npy"):
        np.save(path, image)
    calls = []
    plan_outputs = predict.plan_outputs
    monkeypatch.setattr(predict, "plan_outputs", lambda *a, **k: calls.append(a) or
                        plan_outputs(*a, **k))
    out = tmp_path / "out"
    outcomes = list(predict.predict_all(model, [str(tmp_path / "a.npy"),
                                                str(tmp_path / "folder")], str(out)))
    assert [(o.path, o.error) for o in outcomes] == [
        (str(p), None) for p in (tmp_path / "a.npy", tmp_path / "folder" / "b.npy",
                                 tmp_path / "folder" / "c.npy")]
    assert len(calls) == 1
    assert sorted(os.listdir(out)) == ["a.json", "a_mask.npy", "b.json", "b_mask.npy",
                                       "c.json", "c_mask.npy"]


def test_a_file_made_since_the_plan_is_kept(model, tmp_path, capsys):
    image, _ = lungs_2d(48, 48)
    inputs = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    for path in inputs:
        np.save(path, image)
    out = tmp_path / "out"
    plan = predict.plan_outputs(inputs, str(out))
    out.mkdir()
    (out / "b.json").write_text("made since the plan")
    first, second = predict.predict_all(model, inputs, str(out), plan=plan)
    assert first.error is None and first.result["mask"] == str(out / "a_mask.npy")
    assert isinstance(second.error, predict.OutputError) and second.result is None
    assert str(second.error) == (f"{out / 'b.json'} exists (an output of {inputs[1]}, made "
                                 "since the check); give --overwrite to replace it")
    assert capsys.readouterr() == ("", "")  # the library prints nothing: the command does
    assert (out / "b.json").read_text() == "made since the plan"
    # b's mask was written before its report was refused; no temporary file is left.
    assert sorted(os.listdir(out)) == ["a.json", "a_mask.npy", "b.json", "b_mask.npy"]


def test_keeping_a_file_works_without_hard_links(tmp_path, monkeypatch):
    from lungseg_jax.core import files

    def no_links(source, target):
        raise PermissionError("links are not supported here")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "x.txt"
    files.write_file_atomic(str(path), lambda tmp: open(tmp, "w").write("one"), replace=False)
    with pytest.raises(FileExistsError):
        files.write_file_atomic(str(path), lambda tmp: open(tmp, "w").write("two"),
                                replace=False)
    assert path.read_text() == "one" and os.listdir(tmp_path) == ["x.txt"]


@needs_nibabel
def test_command_line_labels_sides_and_prints_warnings(model_dir, tmp_path):
    image, truth = lungs_2d(SIZE, SIZE)  # the model's size: nothing resized, an exact mask
    np.save(tmp_path / "slice.npy", image)
    stack = np.moveaxis(np.stack([image] * 3, axis=-1), -1, 0)  # (slice, row, column)
    nibabel.save(nibabel.Nifti1Image(stack, np.eye(4)), tmp_path / "stack.nii.gz")
    run = run_predict(model_dir, tmp_path / "out", "--label_sides", tmp_path / "slice.npy",
                      tmp_path / "stack.nii.gz")
    assert run.returncode == 1
    assert error_lines(run) == [
        f"error: {tmp_path / 'stack.nii.gz'}: cannot tell the patient's right from left: its "
        "affine is the identity (1 mm voxels at the origin, as an array saved without its "
        "geometry has)"]
    image_left = np.arange(SIZE) < SIZE // 2  # the patient's right (radiological display)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "slice_mask.npy"),
                                  np.where(truth & image_left, 1, np.where(truth, 2, 0)))
    assert "slice.npy: lungs" in run.stdout and "(right " in run.stdout
    without = run_predict(model_dir, tmp_path / "out2", tmp_path / "stack.nii.gz")
    assert without.returncode == 0, without.stderr[-3000:]
    warnings = [line for line in without.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: {tmp_path / 'stack.nii.gz'}: its affine is the identity (1 mm voxels at the "
        "origin, as an array saved without its geometry has): taking its array axes as RAS "
        "and slicing along array axis 2 (S) as axial; check the mask's orientation",
        f"warning: {tmp_path / 'stack.nii.gz'}: axial slices along array axis 2 (S) would be "
        "32 x 3 voxels while that axis has 32: the volume looks stacked along another axis; "
        "check its affine"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


class ConstantModel:
    """An ExportedModel's interface: probability 0.25 everywhere; ``fail_at``: the call
    (counted from 1) that raises instead."""

    input_shape = (SIZE, SIZE, 1)

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at

    def ensemble(self, batch, batch_size):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the model failed")
        return np.full(batch.shape[:3], 0.25, np.float32)

    def snapshots(self, batch, batch_size):
        return self.ensemble(batch, batch_size)[None]


def bar_on_a_terminal(monkeypatch) -> Terminal:
    """Makes segment's progress bar draw on a terminal whose clock stands still, with an
    interval no batch reaches: only the first and the forced draws happen."""
    out, real = Terminal(), progress.Progress
    monkeypatch.setattr(progress, "Progress", lambda *a, **k: real(
        *a, **{**k, "stream": out, "interval": 1e9, "clock": lambda: 1000.0, "width": 100}))
    return out


def test_segment_draws_its_last_batch(monkeypatch):
    out = bar_on_a_terminal(monkeypatch)
    probability, _ = predict.segment(ConstantModel(), np.zeros((10, 20, 20), np.float32),
                                     batch_size=4, show_progress=True)
    assert probability.shape == (10, 20, 20)
    drawn = re.findall(r"step (\d+)/10", ANSI.sub("", out.getvalue()))
    assert sorted(set(drawn), key=int) == ["4", "10"]  # the first batch, and the last


def test_a_failing_model_gives_stderr_and_the_log_back(monkeypatch):
    out = bar_on_a_terminal(monkeypatch)
    stderr, handler = sys.stderr, logging.StreamHandler(out)  # a log on the bar's terminal
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(RuntimeError, match="the model failed"):
            predict.segment(ConstantModel(fail_at=2), np.zeros((10, 20, 20), np.float32),
                            batch_size=4, show_progress=True)
        assert sys.stderr is stderr and handler.stream is out
    finally:
        sys.stderr = stderr
        logging.getLogger().removeHandler(handler)


def test_sides_are_counted_by_inferences_labels(monkeypatch):
    labels = np.zeros((1, 4, 4), np.uint8)
    labels[0, :, 0] = inference.RIGHT  # 4 pixels
    labels[0, :2, 3] = inference.LEFT  # 2 pixels
    scan = scans.Scan(labels.astype(np.float32), ".npy", (0.5, 0.5))
    assert predict._sides(labels, scan) == {
        "right": {"lung_pixels": 4, "lung_area_mm2": 1.0},
        "left": {"lung_pixels": 2, "lung_area_mm2": 0.5}}
    monkeypatch.setattr(predict, "RIGHT", inference.LEFT)  # other labels, other counts
    monkeypatch.setattr(predict, "LEFT", inference.RIGHT)
    assert predict._sides(labels, scan)["right"]["lung_pixels"] == 2


def test_the_library_exports_what_it_defines_or_uses():
    assert sorted(predict.__all__) == [
        "InputError", "Outcome", "OutputError", "Outputs", "describe", "measure",
        "outputs_of", "plan_outputs", "predict_all", "predict_file", "read_scan", "segment",
        "split_name"]
    assert all(hasattr(predict, name) for name in predict.__all__)

"""Evaluation upgrades: TTA, post-processing, HD95, ensembles of the last m, validation
selection, and the report files, on one tiny trained workdir."""

import csv
import json
import math
import re

import cv2
import numpy as np
import pytest

from lungseg_jax.data import preprocess
from lungseg_jax.data import slices as folders
from lungseg_jax.data.phantoms import synthetic_slices
from lungseg_jax.evaluation import evaluator, report
from lungseg_jax.model.unet import probability_fn
from lungseg_jax.rundir.trained import restore_trained
from lungseg_jax.serving import inference
from lungseg_jax.training.loop import train_and_evaluate


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny finished run (2 snapshots, at steps 4 and 8)."""
    from conftest import tiny_config as make  # fixture function, called directly
    path = str(tmp_path_factory.mktemp("run"))
    train_and_evaluate(make.__wrapped__(), path)
    return path


@pytest.fixture(scope="module")
def test_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("test"))
    folders.write_folder(path, synthetic_slices(5, 48, seed=77))
    return path


def test_tta_prediction_is_flip_equivariant(workdir):
    restored = restore_trained(workdir)
    slices = synthetic_slices(3, 64, seed=5)
    images, _ = preprocess.preprocess(slices, restored.config.data)
    predict_fn = probability_fn(restored.model)
    variables = restored.variables[restored.finals[0]]

    def predict(batch):
        return predict_fn(variables, batch)

    plain, tta = inference.plain_and_flip_tta(predict, images, 4)
    plain_f, tta_f = inference.plain_and_flip_tta(predict, images[:, :, ::-1], 4)
    np.testing.assert_allclose(tta_f, tta[:, :, ::-1], atol=1e-6)
    # The model alone is not equivariant, so the check above is not vacuous.
    assert np.abs(plain_f - plain[:, :, ::-1]).max() > 1e-4
    np.testing.assert_allclose(plain, predict(images), atol=1e-6)


def test_postprocessing_keeps_the_two_largest_components():
    mask = np.zeros((30, 40), bool)
    mask[2:12, 2:10] = True  # 80 pixels
    mask[15:28, 3:9] = True  # 78
    mask[5:8, 20:23] = True  # 9
    mask[20:29, 25:38] = True  # 117
    mask[0, 39] = True  # 1
    expected = np.zeros_like(mask)
    expected[2:12, 2:10] = expected[20:29, 25:38] = True
    np.testing.assert_array_equal(inference.keep_largest_components(mask), expected)
    # Diagonal neighbours join (8-connectivity); masks with fewer components are unchanged.
    two = np.eye(6, dtype=bool)
    two[0, 5] = True
    np.testing.assert_array_equal(inference.keep_largest_components(two), two)
    assert not inference.keep_largest_components(np.zeros((4, 4), bool)).any()


def brute_force_hd95(pred, truth):
    def border(mask):
        padded = np.pad(mask, 1)
        inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
        return mask & ~inner

    a, b = np.argwhere(border(pred)), np.argwhere(border(truth))
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)


def test_hd95_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(12):
        shape = tuple(rng.integers(12, 40, size=2))
        blobs = [cv2.GaussianBlur(rng.random(shape), (0, 0), rng.uniform(1, 3)) for _ in range(2)]
        pred, truth = (b > np.quantile(b, rng.uniform(0.3, 0.8)) for b in blobs)
        np.testing.assert_allclose(report.hd95(pred, truth), brute_force_hd95(pred, truth),
                                   rtol=1e-5)
    square = np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    assert report.hd95(square, square) == 0.0
    assert report.hd95(square, np.roll(square, 3, axis=1)) == pytest.approx(3.0)
    assert report.hd95(np.zeros_like(square), np.zeros_like(square)) == 0.0
    assert report.hd95(square, np.zeros_like(square)) == math.inf


def reference_evaluation(trained, slices, members, threshold, tta, postprocess,
                         batch_size=8):
    """(scores, native masks) computed here, independently of the evaluator: each member's
    probabilities (flip TTA: the mean with the un-flipped prediction of the flipped slice),
    their mean, resized bilinearly to each mask's size, thresholded there, optionally
    post-processed; pooled IoU from the summed counts. The model runs on batches padded to
    ``batch_size`` like the evaluator's, so the probabilities are the same floats."""
    predict = probability_fn(trained.model)
    images, _ = preprocess.preprocess(slices, trained.config.data)

    def probabilities(step, inputs):
        padded = np.concatenate([inputs, np.zeros((-len(inputs) % batch_size,
                                                   *inputs.shape[1:]), inputs.dtype)])
        out = [np.asarray(predict(trained.variables[step], padded[i:i + batch_size]))
               for i in range(0, len(padded), batch_size)]
        return np.concatenate(out)[:len(inputs)]

    def member(step):
        if not tta:
            return probabilities(step, images)
        both = probabilities(step, np.concatenate([images, images[:, :, ::-1]]))
        return (both[:len(images)] + both[len(images):, :, ::-1]) / 2

    mean = np.mean([member(step) for step in members], axis=0)
    masks, inter, union, ious, dices = [], 0, 0, [], []
    for p, truth in zip(mean, slices.masks):
        pred = cv2.resize(p, truth.shape[::-1], interpolation=cv2.INTER_LINEAR) > threshold
        if postprocess:
            pred = inference.keep_largest_components(pred)
        truth = truth > 0
        i, u = int((pred & truth).sum()), int((pred | truth).sum())
        inter, union = inter + i, union + u
        ious.append(i / u)
        dices.append(2 * i / (pred.sum() + truth.sum()))
        masks.append(pred)
    scores = {"pooled_iou": inter / union, "mean_iou": float(np.mean(ious)),
              "mean_dice": float(np.mean(dices))}
    return scores, masks


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_every_score_equals_an_independent_computation(workdir, test_dir, threshold):
    """Catches an ensemble reduced to one member, an ignored threshold, a resize after
    thresholding or a nearest-neighbour one, a TTA without its flip back, and a pooled IoU
    computed as a mean: each changes at least one of these scores."""
    trained = restore_trained(workdir)
    slices = folders.read_folder(test_dir)
    result = evaluator.evaluate_workdir(workdir, test_dir, threshold=threshold,
                                        select_on_validation=False)
    assert result["options"]["ensemble_members"] == [4, 8] and trained.finals == [8]
    for weights, tta, postprocess in evaluator.VARIANTS:
        members = [8] if weights == "final" else [4, 8]
        want, _ = reference_evaluation(trained, slices, members, threshold, tta, postprocess)
        got = result["variants"][evaluator.variant_name(weights, tta, postprocess)]
        assert got == pytest.approx(want, abs=1e-12), (weights, tta, postprocess)
    for snapshot in result["snapshots"]:
        want, _ = reference_evaluation(trained, slices, [snapshot["step"]], threshold, False,
                                       False)
        assert {k: v for k, v in snapshot.items() if k != "step"} == pytest.approx(want,
                                                                                    abs=1e-12)


def test_the_checks_above_can_tell_the_mutations_apart(workdir, test_dir):
    """The reference scores differ where a mutation would change them: the members differ,
    so do the thresholds, TTA and not, and the pooled IoU from the mean IoU."""
    trained = restore_trained(workdir)
    slices = folders.read_folder(test_dir)

    def pooled(members=(4, 8), threshold=0.5, tta=False):
        return reference_evaluation(trained, slices, list(members), threshold, tta, False)[0]

    assert pooled()["pooled_iou"] != pooled(members=[8])["pooled_iou"]
    assert pooled()["pooled_iou"] != pooled(threshold=0.3)["pooled_iou"]
    assert pooled()["pooled_iou"] != pooled(tta=True)["pooled_iou"]
    assert pooled()["pooled_iou"] != pooled()["mean_iou"]


def test_ensemble_last_out_of_range_is_refused(workdir, test_dir):
    with pytest.raises(ValueError, match="ensemble_last=3: .* has only 2 snapshots"):
        evaluator.evaluate_workdir(workdir, test_dir, ensemble_last=3)


def test_variants_validation_winner_and_report_files(workdir, test_dir, tmp_path):
    prefix = str(tmp_path / "out" / "test")
    result = evaluator.evaluate_workdir(workdir, test_dir, ensemble_last=1, tta=True,
                                         postprocess=True, select_on_validation=True,
                                         report_prefix=prefix)
    json.dumps(result, allow_nan=False)  # plain JSON

    # The flags apply to final/snapshots/ensemble; the ensemble of the last 1 is that snapshot.
    assert result["options"]["ensemble_members"] == [8]
    assert result["ensemble"] == {k: v for k, v in result["snapshots"][-1].items() if k != "step"}
    names = [evaluator.variant_name(*v) for v in evaluator.VARIANTS]
    assert set(names) == {"final", "final+pp", "final+tta", "final+tta+pp", "ensemble",
                          "ensemble+pp", "ensemble+tta", "ensemble+tta+pp"}
    assert list(result["variants"]) == names
    assert result["variants"]["ensemble+tta+pp"] == result["ensemble"]
    assert result["variants"]["final+tta+pp"] == result["final"]

    # The winner is chosen on the 4 validation slices of the 20 (val_fraction 0.2).
    validation = result["validation"]
    assert validation["num_images"] == 4 and list(validation["variants"]) == names
    best = max(m["pooled_iou"] for m in validation["variants"].values())
    assert validation["variants"][validation["winner"]]["pooled_iou"] == best
    assert result["report_variant"] == validation["winner"]

    # CSV: one row per test image, consistent with the JSON's mean IoU and Dice.
    with open(prefix + ".csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"phantom_{i:04d}" for i in range(5)]
    assert list(rows[0]) == ["name", "iou", "dice", "hd95", "hd95_mm", "intersection",
                             "union", "predicted", "true"]
    scores = result["variants"][result["report_variant"]]
    counts = np.array([[int(r[k]) for k in ("intersection", "union")] for r in rows])
    np.testing.assert_allclose(counts[:, 0].sum() / counts[:, 1].sum(), scores["pooled_iou"])
    np.testing.assert_allclose(counts[:, 0] / counts[:, 1], [float(r["iou"]) for r in rows])
    truth = folders.read_folder(test_dir).masks
    assert [int(r["true"]) for r in rows] == [int((m > 0).sum()) for m in truth]
    np.testing.assert_allclose(np.mean([float(r["iou"]) for r in rows]), scores["mean_iou"])
    np.testing.assert_allclose(np.mean([float(r["dice"]) for r in rows]), scores["mean_dice"])
    # The report's masks: final and the ensemble of the last 1 are both step 8's weights.
    _, reference_masks = reference_evaluation(
        restore_trained(workdir), folders.read_folder(test_dir), [8], 0.5,
        "+tta" in result["report_variant"], "+pp" in result["report_variant"])
    for row, pred, mask in zip(rows, reference_masks, truth):
        assert float(row["hd95"]) == pytest.approx(brute_force_hd95(pred, mask > 0), rel=1e-5)

    # Markdown: the sections, a row per variant, and links to PNGs that exist and decode.
    md = open(prefix + ".md").read()
    for heading in ("# Evaluation of", "## Weights", "## Variants", "## Per image",
                    "## Training curves"):
        assert heading in md
    for name in names:
        assert re.search(rf"^\| {re.escape(name)} \| 0\.\d{{4}} \|", md, re.M), name
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "test_curves.png" in links
    overlays = [link for link in links if link != "test_curves.png"]
    assert len(overlays) == 5  # 3 worst and the 2 other images as best
    assert sum("_worst" in link for link in overlays) == 3
    for link in links:
        png = cv2.imread(str(tmp_path / "out" / link))
        assert png is not None and png.shape[0] > 100 and png.shape[1] > 300, link
    worst_iou = min(float(r["iou"]) for r in rows)
    worst_name = min(rows, key=lambda r: float(r["iou"]))["name"]
    assert f"test_worst1_{worst_name}.png" in overlays
    assert f"min {worst_iou:.4f}" in md


def test_listed_label_errors_are_left_out_and_named(workdir, test_dir, tmp_path):
    listed = tmp_path / "errata.json"
    listed.write_text(json.dumps([{"slice": "phantom_0002", "problem": "mask omits a lung",
                                   "confirmed": "by eye"}]))
    result = evaluator.evaluate_workdir(workdir, test_dir, select_on_validation=False,
                                        errata_file=str(listed))
    assert result["num_images"] == 4 and result["left_out"] == ["phantom_0002"]
    assert "phantom_0002: mask omits a lung (by eye)" in result["left_out_why"]
    trained, slices = restore_trained(workdir), folders.read_folder(test_dir)
    want, _ = reference_evaluation(trained, slices.subset([0, 1, 3, 4]), [8], 0.5, False, False)
    assert result["final"] == pytest.approx(want, abs=1e-12)
    assert "left out as known label errors" in evaluator.format_table(result)
    everything = evaluator.evaluate_workdir(workdir, test_dir, select_on_validation=False,
                                            errata_file=None)
    assert everything["num_images"] == 5 and everything["left_out"] == []


@pytest.mark.parametrize("threshold", [0.5, 0.45])
def test_predict_reproduces_the_evaluated_variant(workdir, test_dir, tmp_path, threshold):
    """export --variant_from carries what evaluate chose (members, TTA, post-processing,
    threshold) and predict applies it: the same masks on the same slices."""
    import tifffile

    from lungseg_jax.serving import export, exported, predict

    result = evaluator.evaluate_workdir(workdir, test_dir, threshold=threshold, tta=True,
                                        postprocess=True, select_on_validation=False)
    chosen = result["chosen"]
    assert chosen == {"name": "ensemble+tta+pp", "members": [4, 8], "tta": True,
                      "postprocess": True, "threshold": threshold}
    evaluation_json = tmp_path / "test.json"
    evaluation_json.write_text(json.dumps(result))
    out = str(tmp_path / "export")
    export.export_workdir(workdir, out, platforms=("cpu",),
                          variant=export.chosen_in(str(evaluation_json)))
    model = exported.ExportedModel(out)
    assert (model.metadata["variant"], model.metadata["snapshot_steps"]) == ("ensemble+tta+pp",
                                                                             [4, 8])

    trained, slices = restore_trained(workdir), folders.read_folder(test_dir)
    images, _ = preprocess.preprocess(slices, trained.config.data)
    probabilities, _ = evaluator.predict_steps(trained, images, [4, 8], 8).of([4, 8], tta=True)
    evaluated = evaluator.native_predictions(probabilities, slices.masks, threshold, True)
    raw = evaluator.native_predictions(probabilities, slices.masks, threshold, False)
    if threshold == 0.5:  # this tiny model's islands: post-processing matters here
        assert any((r != e).any() for r, e in zip(raw, evaluated))
    for name, want, p in zip(slices.names, evaluated, probabilities):
        image_path = f"{test_dir}/{folders.IMAGE_DIR}/{name}.tif"
        got = predict.predict_file(model, image_path, str(tmp_path / "out"))
        mask = tifffile.imread(got["mask"]) > 0
        # The export folds the weights into its program: probabilities agree to a float32
        # ulp, so only a pixel within that of the threshold may differ.
        at_threshold = np.abs(preprocess.to_native(p, want.shape) - threshold) < 1e-5
        assert not ((mask != want) & ~at_threshold).any(), name
        assert got["variant"] == "ensemble+tta+pp" and got["threshold"] == threshold


def test_volume_post_processing_judges_components_in_3d():
    volume = np.zeros((4, 12, 12), bool)
    volume[:, 1:5, 1:5] = True  # a lung: 64 voxels through all slices
    volume[0:2, 7:11, 7:11] = True  # the other: two slices of 16...
    volume[2:4, 7:11, 8:12] = True  # ...joined to two more, shifted by one column: 64
    volume[3, 0, 11] = True  # an island of 1 voxel
    volume[1, 10, 1] = True  # 1 voxel, diagonal (26-connected) to nothing
    kept = inference.keep_largest_components_3d(volume)
    expected = volume.copy()
    expected[3, 0, 11] = expected[1, 10, 1] = False
    np.testing.assert_array_equal(kept, expected)
    # Slice by slice, slice 2's shifted part and slice 0's would each be judged alone.
    two = np.zeros((3, 5, 5), bool)
    two[0, 0, 0] = two[1, 1, 1] = two[2, 2, 2] = True  # one diagonal chain in 3-D
    two[0, 4, 4] = True
    np.testing.assert_array_equal(inference.keep_largest_components_3d(two, keep=1),
                                  two & ~(np.arange(5)[None, :, None] == 4))

"""Cross-validation: folds grouped by patient, resumable fold runs, out-of-fold scores
checked against an independent computation, and the fold ensemble in evaluate/export/predict."""

import csv
import json
import os

import signal
import subprocess
import sys
import time

import cv2
import jax
import numpy as np
import pytest

from lungseg_jax.data import errata, sources
from lungseg_jax.data import slices as folders
from lungseg_jax.data.phantoms import synthetic_slices
from lungseg_jax.data.splits import assign_folds, group_of
from lungseg_jax.evaluation import crossval, evaluator
from lungseg_jax.model.unet import probability_fn
from lungseg_jax.rundir import folds, records
from lungseg_jax.rundir.trained import restore_trained
from lungseg_jax.serving import exported
from lungseg_jax.serving.export import export_workdir
from lungseg_jax.training.crossval import train_folds

PATTERN = r"^(ID_\d+)"
# Ten patients of 1 to 4 slices each (22 slices): the folds must keep each patient whole.
SLICES_PER_PATIENT = [1, 2, 3, 4, 1, 2, 3, 2, 2, 2]
LABEL_ERROR = "ID_0003_Z_0002"


def patient_names():
    return [f"ID_{p:04d}_Z_{z:04d}" for p, count in enumerate(SLICES_PER_PATIENT)
            for z in range(count)]


def test_group_of_takes_the_patient_id_or_the_whole_name():
    assert group_of("ID_0079_Z_0072", PATTERN) == "ID_0079"
    assert group_of("phantom_0004", PATTERN) == "phantom_0004"
    assert group_of("scanA-slice3", r"^(\w+)-") == "scanA"
    assert group_of("scanA-slice3", r"^scan") == "scan"  # no group: the whole match


def test_folds_keep_patients_whole_balanced_and_deterministic():
    names = patient_names()
    fold_of = assign_folds(names, 3, PATTERN, seed=0)
    by_patient = {}
    for name, fold in zip(names, fold_of):
        by_patient.setdefault(group_of(name, PATTERN), set()).add(int(fold))
    assert all(len(f) == 1 for f in by_patient.values())
    # Dealt largest first to the smallest fold: 22 slices in 3 folds of 8, 7, 7.
    assert sorted(np.bincount(fold_of, minlength=3).tolist()) == [7, 7, 8]
    shuffled = list(reversed(names))
    np.testing.assert_array_equal(assign_folds(shuffled, 3, PATTERN, 0)[::-1], fold_of)
    assert not np.array_equal(assign_folds(names, 3, PATTERN, seed=1), fold_of)


def test_folds_by_hand():
    # Groups a (3 slices), b (2), c (1), d (1), largest first, each to the emptiest fold
    # (the first on ties): a -> 0, b -> 1 (sizes 3, 2), the first of c and d in the
    # shuffle -> 1 (3, 3), the other -> 0 (4, 3).
    names = ["a-1", "a-2", "a-3", "b-1", "b-2", "c-1", "d-1"]
    fold_of = assign_folds(names, 2, r"^(\w)-", seed=0)
    groups = {n[0]: int(f) for n, f in zip(names, fold_of)}
    assert (groups["a"], groups["b"]) == (0, 1)
    assert sorted((groups["c"], groups["d"])) == [0, 1]
    assert np.bincount(fold_of).tolist() == [4, 3]


def test_too_few_patients_for_the_folds_is_refused():
    with pytest.raises(ValueError, match="5 folds need at least 5 groups.*has 2"):
        assign_folds(["ID_0001_Z_1", "ID_0001_Z_2", "ID_0002_Z_1"], 5, PATTERN, 0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """22 phantom slices named by patient; ``LABEL_ERROR``'s mask loses one lung."""
    path = str(tmp_path_factory.mktemp("data"))
    phantoms = synthetic_slices(len(patient_names()), 64, seed=3)
    masks = list(phantoms.masks)
    i = patient_names().index(LABEL_ERROR)
    masks[i] = masks[i].copy()
    masks[i][:, :32] = 0  # the image's left half: one lung gone
    folders.write_folder(path, folders.Slices(patient_names(), phantoms.images, masks))
    return path


@pytest.fixture(scope="module")
def errata_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("errata") / "errata.json")
    with open(path, "w") as f:
        json.dump([{"slice": LABEL_ERROR, "problem": "one lung missing",
                    "confirmed": "made so by the test"}], f)
    return path


def cv_config(data_dir, errata_file):
    from conftest import tiny_config as make
    config = make.__wrapped__()
    config.data.source, config.data.path = "folder", data_dir
    config.data.errata = errata_file
    config.data.cv.folds = 3
    return config


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory, data_dir, errata_file):
    path = str(tmp_path_factory.mktemp("cv"))
    train_folds(cv_config(data_dir, errata_file), path)
    return path


def test_each_fold_validates_on_its_patients_without_the_label_error(data_dir, errata_file):
    config = cv_config(data_dir, errata_file)
    fold_of = dict(zip(patient_names(), assign_folds(patient_names(), 3, PATTERN, 0)))
    seen = []
    for fold in range(3):
        train, val = sources.train_val_slices(folds.fold_config(config, fold).data)
        expected_val = sorted(n for n, f in fold_of.items() if f == fold and n != LABEL_ERROR)
        assert sorted(val.names) == expected_val
        assert sorted(train.names) == sorted(n for n, f in fold_of.items()
                                             if f != fold and n != LABEL_ERROR)
        seen += val.names
    assert sorted(seen) == sorted(set(patient_names()) - {LABEL_ERROR})


def independent_oof_counts(cv_dir, threshold=0.5, weights="final"):
    """Per fold: its final weights (or its snapshots' mean probability) on its recorded
    validation slices, thresholded at the slices' size after a bilinear resize, counted
    with numpy."""
    counts = []
    for fold in range(3):
        workdir = folds.fold_workdir(cv_dir, fold)
        run = restore_trained(workdir)
        with open(os.path.join(workdir, "split.json")) as f:
            val_names = sorted(json.load(f)["validation"])
        data = folders.read_folder(run.config.data.path)
        predict = probability_fn(run.model)  # one jitted function per fold: compiled once
        for name in val_names:
            i = data.names.index(name)
            image = np.clip((data.images[i].astype(np.float32) + 1350) / 1500, 0, 1)
            small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)[None, ..., None]
            members = run.finals if weights == "final" else run.snapshots
            prob = np.mean([np.asarray(predict(run.variables[m], small))[0]
                            for m in members], axis=0)
            pred = cv2.resize(prob, (64, 64), interpolation=cv2.INTER_LINEAR) > threshold
            truth = data.masks[i] > 0
            counts.append(((pred & truth).sum(), (pred | truth).sum()))
    return np.array(counts, np.float64)


def test_out_of_fold_scores_match_an_independent_computation(cv_dir):
    summary = crossval.cross_validate(cv_dir, threshold=0.5, batch_size=4)
    counts = independent_oof_counts(cv_dir)
    assert summary["num_images"] == len(counts) == len(patient_names()) - 1
    expected = counts[:, 0].sum() / counts[:, 1].sum()
    assert summary["variants"]["final"]["pooled_iou"] == pytest.approx(expected, abs=1e-6)
    ensemble = independent_oof_counts(cv_dir, weights="ensemble")
    assert summary["variants"]["ensemble"]["pooled_iou"] == pytest.approx(
        ensemble[:, 0].sum() / ensemble[:, 1].sum(), abs=1e-6)
    assert summary["left_out"] == [LABEL_ERROR]
    with open(os.path.join(cv_dir, crossval.CSV_FILE)) as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] == "final"]
    by_fold = {}
    for r in rows:
        by_fold.setdefault(int(r["fold"]), []).append((int(r["intersection"]), int(r["union"])))
        assert r["group"] == r["name"][:7]
    per_fold = [sum(i for i, _ in c) / sum(u for _, u in c) for _, c in sorted(by_fold.items())]
    assert summary["variants"]["final"]["fold_pooled_iou"] == pytest.approx(per_fold, abs=1e-9)
    assert summary["variants"]["final"]["fold_std"] == pytest.approx(np.std(per_fold))
    with open(os.path.join(cv_dir, crossval.SUMMARY_FILE)) as f:
        assert json.load(f) == summary


def test_rerun_resumes_nothing_and_another_cross_validation_is_refused(
        cv_dir, data_dir, errata_file):
    before = {fold: records.read_metrics(folds.fold_workdir(cv_dir, fold)) for fold in range(3)}
    train_folds(cv_config(data_dir, errata_file), cv_dir)  # all folds finished: no work
    assert before == {f: records.read_metrics(folds.fold_workdir(cv_dir, f)) for f in range(3)}
    config = cv_config(data_dir, errata_file)
    config.data.cv.folds = 4
    with pytest.raises(ValueError, match="data.cv.folds: 3 -> 4"):
        train_folds(config, cv_dir)


def test_a_plain_run_workdir_is_not_taken_for_a_cross_validation(tmp_path, cv_dir):
    run_dir = folds.fold_workdir(cv_dir, 0)
    with pytest.raises(ValueError, match="a training run's workdir"):
        folds.prepare(run_dir, records.load_config(run_dir), write=False)


def fold_members(cv_dir):
    """Every fold's snapshots, named as the fold ensemble names them."""
    return [f"fold{f}_step{s}" for f in range(3)
            for s in restore_trained(folds.fold_workdir(cv_dir, f)).snapshots]


def test_evaluate_scores_the_fold_ensemble(cv_dir, tmp_path):
    test_dir = str(tmp_path / "test")
    folders.write_folder(test_dir, synthetic_slices(4, 64, seed=91))
    result = evaluator.evaluate_workdir(cv_dir, test_dir, batch_size=4,
                                        errata_file=None)
    trained = restore_trained(cv_dir)
    members = fold_members(cv_dir)
    assert trained.snapshots == members and result["options"]["ensemble_members"] == members
    for fold in range(3):  # each member holds its own fold's weights
        run = restore_trained(folds.fold_workdir(cv_dir, fold))
        for step in run.snapshots:
            jax.tree.map(np.testing.assert_array_equal,
                         trained.variables[f"fold{fold}_step{step}"], run.variables[step])
    # The ensemble by hand: every fold's snapshots' probabilities averaged.
    data = folders.read_folder(test_dir)
    images = np.stack([cv2.resize(np.clip((i.astype(np.float32) + 1350) / 1500, 0, 1),
                                  (32, 32), interpolation=cv2.INTER_AREA) for i in data.images])
    mean = np.mean([np.asarray(probability_fn(trained.model)(trained.variables[m],
                                                            images[..., None]))
                    for m in members], axis=0)
    preds = np.stack([cv2.resize(p, (64, 64), interpolation=cv2.INTER_LINEAR) > 0.5
                      for p in mean])
    truth = np.stack(data.masks) > 0
    expected = (preds & truth).sum() / (preds | truth).sum()
    assert result["ensemble"]["pooled_iou"] == pytest.approx(expected, abs=1e-6)
    # Chosen out of fold: every slice validated once, by the fold that did not train on it.
    assert result["validation"]["num_images"] == len(patient_names()) - 1
    assert result["crossval_folds"] == 3


def test_export_and_predict_apply_the_fold_ensemble(cv_dir, tmp_path):
    metadata = export_workdir(cv_dir, str(tmp_path / "export"), platforms=("cpu",))
    assert metadata["snapshot_steps"] == fold_members(cv_dir)
    model = exported.ExportedModel(str(tmp_path / "export"))
    trained = restore_trained(cv_dir)
    images = np.random.default_rng(0).random((2, 32, 32, 1), np.float32)
    expected = np.mean([np.asarray(probability_fn(trained.model)(trained.variables[m], images))
                        for m in trained.snapshots], axis=0)
    np.testing.assert_allclose(model.ensemble(images), expected, atol=1e-5)


def test_audit_ranks_every_slice_by_its_out_of_fold_disagreement_and_flags(cv_dir, tmp_path):
    from lungseg_jax.evaluation import audit
    from lungseg_jax.serving.inference import keep_largest_components

    rows = audit.audit(cv_dir, str(tmp_path / "audit"), top=2, batch_size=4)
    assert sorted(r["name"] for r in rows) == sorted(patient_names())  # errata included
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["suspicion"] for r in rows] == sorted((r["suspicion"] for r in rows),
                                                    reverse=True)
    flagged = {r["name"]: r for r in rows}[LABEL_ERROR]
    assert flagged["known_error"] and flagged["flags"] == ["one_sided"]
    # Each slice's out-of-fold IoU by hand: its fold's snapshots, flip TTA, two largest parts.
    fold_of = dict(zip(patient_names(), assign_folds(patient_names(), 3, PATTERN, 0)))
    data = folders.read_folder(restore_trained(cv_dir).config.data.path)
    for row in rows[:4]:
        run = restore_trained(folds.fold_workdir(cv_dir, fold_of[row["name"]]))
        i = data.names.index(row["name"])
        image = cv2.resize(np.clip((data.images[i].astype(np.float32) + 1350) / 1500, 0, 1),
                           (32, 32), interpolation=cv2.INTER_AREA)
        batch = np.stack([image, image[:, ::-1]])[..., None]
        predict = probability_fn(run.model)
        probs = [np.asarray(predict(run.variables[s], batch)) for s in run.snapshots]
        mean = np.mean([(p[0] + p[1][:, ::-1]) / 2 for p in probs], axis=0)
        pred = keep_largest_components(cv2.resize(mean, (64, 64)) > 0.5)
        truth = data.masks[i] > 0
        iou = (pred & truth).sum() / (pred | truth).sum()
        assert row["oof_iou"] == pytest.approx(iou, abs=1e-6)
        assert row["suspicion"] == pytest.approx(1 - iou + 0.25 * bool(row["flags"]))
    written = sorted(os.listdir(tmp_path / "audit"))
    assert written == ["audit.csv"] + sorted(f"audit_{r['rank']}_{r['name']}.png"
                                             for r in rows[:2])
    with open(tmp_path / "audit" / "audit.csv") as f:
        assert [r["name"] for r in csv.DictReader(f)] == [r["name"] for r in rows]


def test_an_unfinished_fold_is_named_not_used(cv_dir, tmp_path):
    import shutil

    partial = tmp_path / "cv"
    shutil.copytree(cv_dir, partial)
    shutil.rmtree(folds.fold_workdir(partial, 2))
    with pytest.raises(FileNotFoundError, match="fold_2 has not finished training "
                                                r"\(not started\)"):
        restore_trained(str(partial))
    run = folds.fold_workdir(partial, 1)
    last = max(int(s) for s in os.listdir(run / "checkpoints") if s.isdigit())
    shutil.copytree(folds.fold_workdir(cv_dir, 2), folds.fold_workdir(partial, 2))
    shutil.rmtree(run / "checkpoints" / str(last))  # fold 1 stopped before its last step
    with pytest.raises(FileNotFoundError, match=rf"fold_1 has not finished training \(step "
                                                rf"\d+ of {last}\)"):
        restore_trained(str(partial))


@pytest.mark.parametrize("field, value, message", [
    ("folds", 1, "data.cv.folds=1 is invalid: expected 0"),
    ("fold", 3, "data.cv.fold=3 is invalid: expected a fold in \\[0, 3\\)"),
    ("group_pattern", "^(ID_", "data.cv.group_pattern='\\^\\(ID_' is invalid: not a regular"),
    ("group_pattern", r"^(ID)_(\d+)", "expected at most one group"),
])
def test_bad_cross_validation_fields_are_refused_naming_them(tiny_config, field, value,
                                                             message):
    from lungseg_jax.training.config_checks import check_config

    tiny_config.data.cv.folds = 3
    setattr(tiny_config.data.cv, field, value)
    with pytest.raises(ValueError, match=message):
        check_config(tiny_config)


@pytest.mark.slow  # 30 s; train's own SIGTERM test, in the default suite, covers the helper
def test_sigterm_stops_the_fold_in_progress_exits_143_and_a_rerun_finishes(tmp_path):
    from conftest import REPO, TINY_FLAGS

    workdir = tmp_path / "cv"
    command = [sys.executable, "-m", "lungseg_jax.crossval", "--config", "configs/default.py",
               f"--workdir={workdir}", "--folds", "2", *TINY_FLAGS,
               "--config.checkpoint.every_steps=1"]
    log = tmp_path / "crossval.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        checkpoints = folds.fold_workdir(workdir, 0) / "checkpoints"
        while not (checkpoints.exists() and any(s.isdigit() for s in os.listdir(checkpoints))):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=240) == 143, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "on SIGTERM; checkpoint saved" in log.read_text()
    assert not folds.fold_workdir(workdir, 1).exists()
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed from the checkpoint" in rerun.stderr
    assert (workdir / crossval.SUMMARY_FILE).exists()

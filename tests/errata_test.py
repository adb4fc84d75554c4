"""Dataset errata: the shipped list, a user's own file, and the commands leaving them out."""

import json
import os

import numpy as np
import pytest
import tifffile

from conftest import NO_REAL_DATA, REAL_DATA, good_pair, write_pair
from lungseg_jax.data import errata, splits
from lungseg_jax.data import slices as folders

KNOWN = "ID_0079_Z_0072"
# Masks that label the air around the patient as lung: (pixels, pixels outside the body).
AIR_LABELLED = {"ID_0052_Z_0108": (94390, 41552), "ID_0134_Z_0137": (97706, 41096),
                "ID_0254_Z_0075": (150273, 97524)}


def test_the_shipped_list_names_the_mislabeled_slices_and_why():
    shipped = errata.load_errata()
    assert sorted(shipped) == sorted([KNOWN, *AIR_LABELLED])
    assert "right lung" in shipped[KNOWN]["problem"]
    for name, (total, outside) in AIR_LABELLED.items():
        assert f"{outside:,} of its {total:,} pixels lie outside the body" in \
            shipped[name]["problem"]
    assert all("by eye" in entry["confirmed"] for entry in shipped.values())
    assert errata.load_errata(None) == {} and errata.load_errata("") == {}


@pytest.mark.parametrize("content, message", [
    ("not json", "cannot read it as JSON"),
    ('{"slice": "x"}', "expected a JSON list"),
    ('[{"slice": "x", "problem": "p"}]', "entry 0 lacks confirmed"),
])
def test_a_malformed_user_file_is_refused_naming_it(tmp_path, content, message):
    path = tmp_path / "mine.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"errata file {path}: {message}"):
        errata.load_errata(str(path))


def user_errata(tmp_path, names):
    path = tmp_path / "errata.json"
    path.write_text(json.dumps([{"slice": n, "problem": "wrong", "confirmed": "by eye"}
                                for n in names]))
    return str(path)


def test_split_folder_leaves_the_listed_slices_out_of_both_parts(tmp_path):
    source = tmp_path / "data"
    for i in range(10):
        write_pair(str(source), f"s{i}", *good_pair())
    listed = user_errata(tmp_path, ["s3", "s7", "not_in_the_folder"])
    counts = splits.split_folder(str(source), str(tmp_path / "split"), 0.25, seed=0,
                                 errata=listed)
    assert counts == {"train": 6, "test": 2, "left_out": ["s3", "s7"],
                      "left_out_why": "2 slice(s) left out as known label errors: s3: wrong "
                                      "(by eye); s7: wrong (by eye)"}
    linked = {name for part in ("train", "test")
              for name in os.listdir(tmp_path / "split" / part / folders.IMAGE_DIR)}
    assert linked == {f"s{i}.tif" for i in range(10)} - {"s3.tif", "s7.tif"}
    everything = splits.split_folder(str(source), str(tmp_path / "all"), 0.25, seed=0,
                                     errata=None)
    assert everything["train"] == 8 and everything["test"] == 2  # round(2.5) is 2
    assert everything["left_out"] == []


def test_without_errata_keeps_the_order_of_the_rest():
    slices = folders.Slices(["a", "b", "c"], [np.zeros(1)] * 3, [np.ones(1) * i for i in range(3)])
    kept, left_out = errata.without_errata(slices, {"b": {}})
    assert kept.names == ["a", "c"] and left_out == ["b"]
    np.testing.assert_array_equal(kept.masks[1], [2])


@pytest.mark.skipif(not os.path.isdir(REAL_DATA), reason=NO_REAL_DATA)
def test_the_real_folder_holds_the_listed_slices_and_their_faults():
    from lungseg_jax.evaluation.audit import body_mask

    images, masks = folders.paired_tiff_names(REAL_DATA)
    kept, left_out = errata.leave_out(sorted(images), errata.load_errata())
    assert left_out == sorted([KNOWN, *AIR_LABELLED]) and len(kept) == len(images) - 4
    known = tifffile.imread(masks[KNOWN]) > 0
    assert known.sum() == 20305 and not known[:, :256].any()  # one lung, image right only
    for name, (total, outside) in AIR_LABELLED.items():
        mask = tifffile.imread(masks[name]) > 0
        assert (mask.sum(), (mask & ~body_mask(tifffile.imread(images[name]))).sum()) == \
            (total, outside)


def test_training_leaves_the_listed_slices_out_and_checks_the_field(tiny_config, tmp_path):
    from lungseg_jax.data.phantoms import synthetic_slices
    from lungseg_jax.data.sources import train_val_slices
    from lungseg_jax.training.config_checks import check_config

    folders.write_folder(str(tmp_path / "data"), synthetic_slices(20, 64, seed=3))
    tiny_config.data.source, tiny_config.data.path = "folder", str(tmp_path / "data")
    tiny_config.data.errata = user_errata(tmp_path, ["phantom_0004"])
    train, validation = train_val_slices(tiny_config.data)
    names = train.names + validation.names
    assert len(names) == 19 and "phantom_0004" not in names
    tiny_config.data.errata = "none"
    train, validation = train_val_slices(tiny_config.data)
    assert len(train) + len(validation) == 20
    tiny_config.data.errata = str(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="config.data.errata=.*missing.json.* is invalid"):
        check_config(tiny_config)

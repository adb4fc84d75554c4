"""The evaluation report written next to the metrics JSON (``PREFIX`` = its path less .json).

    PREFIX.csv                  per image: name, IoU, Dice, HD95 in pixels and in mm (empty
                                where the pixel spacing is unknown), and the pixel counts
                                (intersection, union, predicted, true) that give the
                                pooled IoU of any subset
    PREFIX.md                   summary: metrics, variants, per-image statistics, figures
    PREFIX_worst<k>_<name>.png  overlays (slice, truth, prediction, uncertainty) of the
    PREFIX_best<k>_<name>.png   worst and best slices by IoU
    PREFIX_curves.png           training curves from WORKDIR/metrics.jsonl

PREFIX and WORKDIR may be ``etils.epath`` URIs such as ``gs://bucket/run/evaluation``.

A slice's pixel spacing is its image TIFF's resolution tags when they are in centimetres
(as ``predict`` reads them; inches are usually a display default, not a scan's), else the
one given (``spacing_mm``), else unknown.
"""

import csv
import io
import json
import math

import cv2
import matplotlib
from etils import epath
from matplotlib import patches, ticker
from scipy import ndimage

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lungseg_jax.core import metrics  # noqa: E402
from lungseg_jax.core.files import absolute  # noqa: E402
from lungseg_jax.data.preprocess import window  # noqa: E402
from lungseg_jax.data.slices import Slices, paired_tiff_names, tiff_spacing_mm  # noqa: E402
from lungseg_jax.rundir.records import read_metrics  # noqa: E402
from lungseg_jax.serving.scans import slice_spacing_mm  # noqa: E402

NUM_OVERLAYS = 3  # worst and best slices drawn each
CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def surface(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (outside the image counts as outside)."""
    mask = mask.astype(np.uint8)
    eroded = cv2.erode(mask, CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (mask > 0) & (eroded == 0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple | None = None) -> float:
    """95th percentile of the symmetric surface distances (Euclidean): in pixels, or in mm
    given the pixel ``spacing`` (row, column) in mm.

    0 when both masks are empty, inf when only one is.
    """
    a, b = surface(pred), surface(truth)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return math.inf

    def distance_to(s):  # exact Euclidean distance of every pixel to the nearest pixel of s
        return ndimage.distance_transform_edt(~s, sampling=spacing or (1, 1))  # per axis

    return float(np.percentile(np.concatenate([distance_to(b)[a], distance_to(a)[b]]), 95))


def slice_spacings(names: list, data_dir: str | None, spacing_mm: float | None) -> list:
    """Each slice's (row, column) spacing in mm: its image TIFF's (``tiff_spacing_mm``),
    else ``(spacing_mm, spacing_mm)``, else None (``scans.slice_spacing_mm``, as predict)."""
    files = paired_tiff_names(data_dir)[0] if data_dir else {}
    return [slice_spacing_mm(tiff_spacing_mm(files[name]) if name in files else None,
                             spacing_mm) for name in names]


CSV_FIELDS = ["name", "iou", "dice", "hd95", "hd95_mm", "intersection", "union", "predicted",
              "true"]
COUNT_FIELDS = CSV_FIELDS[-4:]


def per_image_rows(names, predictions, masks, counts, spacings=None) -> list:
    """One dict of CSV_FIELDS per image; ``counts`` from ``metrics.pixel_counts``;
    ``spacings``: each image's (row, column) spacing in mm or None (``hd95_mm`` then None)."""
    rows = []
    for i, (name, pred, mask, count) in enumerate(zip(names, predictions, masks, counts)):
        summary = metrics.summarize(count)
        spacing = spacings[i] if spacings else None
        rows.append({"name": name, "iou": summary["mean_iou"], "dice": summary["mean_dice"],
                     "hd95": hd95(pred, mask > 0),
                     "hd95_mm": None if spacing is None else hd95(pred, mask > 0, spacing),
                     **dict(zip(COUNT_FIELDS, (int(c) for c in np.asarray(count))))})
    return rows


def write_csv(path: epath.Path, rows: list) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows({**r, "hd95_mm": "" if r["hd95_mm"] is None else r["hd95_mm"]}
                     for r in rows)
    path.write_text(text.getvalue())


def save_figure(fig, path: epath.Path) -> None:
    """Writes ``fig`` as a PNG to ``path`` (through epath: local or object store) and closes it."""
    with path.open("wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)


def overlay_choice(rows: list) -> list:
    """[(label, index)]: up to NUM_OVERLAYS worst and (other) best images by IoU."""
    order = np.argsort([r["iou"] for r in rows], kind="stable")
    worst = order[:min(NUM_OVERLAYS, math.ceil(len(order) / 2))]
    best = order[len(worst):][::-1][:NUM_OVERLAYS]
    return ([(f"worst{k + 1}", i) for k, i in enumerate(worst)]
            + [(f"best{k + 1}", i) for k, i in enumerate(best)])


def write_overlay(path: epath.Path, image, truth, pred, uncertainty, data_config,
                  row: dict) -> None:
    """One row of panels: slice, truth, prediction (errors coloured), uncertainty."""
    gray = window(image, data_config.hu_min, data_config.hu_max)
    truth, pred = truth > 0, pred > 0
    errors = np.zeros((*gray.shape, 4))
    errors[pred & truth] = (0.0, 0.8, 0.0, 0.45)  # true positive: green
    errors[pred & ~truth] = (1.0, 0.0, 0.0, 0.7)  # false positive: red
    errors[~pred & truth] = (0.0, 0.4, 1.0, 0.7)  # false negative: blue
    truth_rgba = np.zeros((*gray.shape, 4))
    truth_rgba[truth] = (1.0, 0.85, 0.0, 0.45)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    hd = f"HD95 {row['hd95']:.1f} px" + ("" if row["hd95_mm"] is None
                                          else f" ({row['hd95_mm']:.1f} mm)")
    for ax, overlay, title in ((axes[0], None, row["name"]), (axes[1], truth_rgba, "truth"),
                               (axes[2], errors, f"prediction: IoU {row['iou']:.4f}, {hd}")):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        if overlay is not None:
            ax.imshow(overlay)
        ax.set_title(title, fontsize=9)
    axes[1].legend(handles=[patches.Patch(color=(1.0, 0.85, 0.0), label="lung (truth)")],
                   loc="lower center", fontsize=7, framealpha=0.8)
    axes[2].legend(handles=[patches.Patch(color=c, label=label) for c, label in (
        ((0.0, 0.8, 0.0), "correct"), ((1.0, 0.0, 0.0), "false positive"),
        ((0.0, 0.4, 1.0), "missed"))], loc="lower center", ncol=3, fontsize=7, framealpha=0.8)
    shown = axes[3].imshow(uncertainty, cmap="magma", vmin=0, vmax=0.5)
    axes[3].set_title("uncertainty (snapshot std)", fontsize=9)
    fig.colorbar(shown, ax=axes[3], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def write_curves(path: epath.Path, records: list) -> None:
    """Losses, validation IoU/Dice and learning rate per epoch."""
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    panels = ((axes[0], ("train_loss", "val_loss"), "loss"),
              (axes[1], ("val_pooled_iou", "val_mean_dice"), "validation"),
              (axes[2], ("learning_rate",), "learning rate"))
    for ax, keys, title in panels:
        for key in keys:
            ax.plot(epochs, [r[key] for r in records], marker=".", label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.tight_layout()
    save_figure(fig, path)


def metrics_table(first: str, rows, with_validation: dict | None = None) -> list:
    """Markdown table lines: ``first`` column name, then the metrics (and validation's)."""
    header = f"| {first} | pooled IoU | mean IoU | mean Dice |"
    if with_validation is not None:
        header += " validation pooled IoU |"
    lines = [header, "|" + "---|" * header.count(" |")]
    for name, m in rows:
        line = f"| {name} | {m['pooled_iou']:.4f} | {m['mean_iou']:.4f} | {m['mean_dice']:.4f} |"
        if with_validation is not None:
            line += f" {with_validation[name]['pooled_iou']:.4f} |"
        lines.append(line)
    return lines


def hd95_summary(rows: list) -> str:
    """The per-image HD95 statistics, saying their unit: pixels for all images, and mm for
    those whose pixel spacing is known."""
    finite = [r["hd95"] for r in rows if math.isfinite(r["hd95"])]
    text = (f"HD95 in pixels: median {np.median(finite):.2f} px, max {max(finite):.2f} px"
            if finite else "no finite HD95")
    text += (f"; {len(rows) - len(finite)} images with an empty prediction or truth "
             "(HD95 inf).")
    known = [r["hd95_mm"] for r in rows if r["hd95_mm"] is not None]
    finite_mm = [v for v in known if math.isfinite(v)]
    if not known:
        return text + " HD95 in mm: unknown (no pixel spacing: TIFF resolution in cm, or " \
                      "evaluate's --spacing_mm)."
    mm = (f"median {np.median(finite_mm):.2f} mm, max {max(finite_mm):.2f} mm" if finite_mm
          else "none finite")
    return text + f" HD95 in mm ({len(known)} of {len(rows)} images of known spacing): {mm}."


def markdown(result: dict, workdir: str, rows: list, csv_name: str, overlays: list,
             curves_name: str | None) -> str:
    """The summary: headline metrics, variants, per-image statistics, figure links."""
    variant = result["report_variant"]
    chosen = (f"winner on the run's validation split ({result['validation']['num_images']} "
              "images)" if "validation" in result else "requested by the options")
    lines = [f"# Evaluation of `{workdir}` on {result['num_images']} images", "",
             f"Options: `{json.dumps(result['options'])}`. Report variant: **{variant}** "
             f"({chosen}). A pixel is lung where the probability exceeds "
             f"{result['options']['threshold']}.", "",
             f"Left out: {result['left_out_why']}.", "", "## Weights", ""]
    lines += metrics_table("weights", [("final", result["final"])]
                           + [(f"snapshot@{s['step']}", s) for s in result["snapshots"]]
                           + [("ensemble", result["ensemble"])])
    lines += ["", "## Variants", ""]
    lines += metrics_table("variant", result["variants"].items(),
                           result["validation"]["variants"] if "validation" in result else None)
    ious = [r["iou"] for r in rows]
    lines += ["", f"## Per image ({variant})", "",
              f"IoU mean {np.mean(ious):.4f}, median {np.median(ious):.4f}, min {min(ious):.4f}; "
              f"{hd95_summary(rows)} Every image: [{csv_name}]({csv_name}).", ""]
    lines += [f"![{label}: {rows[i]['name']}]({file})" for label, i, file in overlays]
    lines += ["", "## Training curves", ""]
    lines += [f"![training curves]({curves_name})" if curves_name
              else f"No metrics.jsonl in `{workdir}`."]
    return "\n".join(lines) + "\n"


def write_report(prefix: epath.PathLike, result: dict, workdir: epath.PathLike, data_config,
                 slices: Slices, predictions: list, counts, uncertainty: list, *,
                 data_dir: str | None = None, spacing_mm: float | None = None,
                 written: list | None = None) -> None:
    """Writes the files listed in the module docstring for ``result['report_variant']``.

    ``data_dir``: the slices' folder, whose image TIFFs may record their pixel spacing;
    ``spacing_mm``: the spacing of those that do not. The paths of the files written are
    appended to ``written``.
    """
    prefix = absolute(prefix)
    folder, stem = prefix.parent, prefix.name
    folder.mkdir(parents=True, exist_ok=True)
    rows = per_image_rows(slices.names, predictions, slices.masks, counts,
                          slice_spacings(slices.names, data_dir, spacing_mm))
    files = [folder / (stem + ".csv")]
    write_csv(files[0], rows)
    overlays = []
    for label, i in overlay_choice(rows):
        file = f"{stem}_{label}_{rows[i]['name']}.png"
        write_overlay(folder / file, slices.images[i], slices.masks[i],
                      predictions[i], uncertainty[i], data_config, rows[i])
        overlays.append((label, i, file))
        files.append(folder / file)
    records = read_metrics(workdir)
    curves_name = f"{stem}_curves.png" if records else None
    if records:
        write_curves(folder / curves_name, records)
        files.append(folder / curves_name)
    summary = markdown(result, workdir, rows, stem + ".csv", overlays, curves_name)
    (folder / (stem + ".md")).write_text(summary)
    files.append(folder / (stem + ".md"))
    if written is not None:
        written.extend(str(f) for f in files)

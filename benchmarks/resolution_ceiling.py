"""What the training resolution and the boundary alone cost the pooled IoU at 512x512.

    python benchmarks/resolution_ceiling.py [--data DIR]

For each training size it takes every real mask (the errata left out) to the size the way
training does (area average; thresholded at 0.5 for binary targets, kept for soft ones),
brings it back as evaluation does (bilinear, threshold 0.5) and scores it against the
original: the pooled IoU of a model that reproduced its targets exactly. It also prints
what a boundary off by one or two pixels everywhere (dilated or eroded masks) scores.
"""

import argparse
import os

import cv2
import numpy as np

from lungseg_jax.data import errata
from lungseg_jax.data.preprocess import preprocess_masks, to_native
from lungseg_jax.data.slices import read_folder

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "finding-lungs-in-ct-data")


def pooled_iou(predictions, masks) -> float:
    inter = sum(int((p & m).sum()) for p, m in zip(predictions, masks))
    union = sum(int((p | m).sum()) for p, m in zip(predictions, masks))
    return inter / union


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    args = parser.parse_args()
    slices, left_out = errata.without_errata(read_folder(args.data), errata.load_errata())
    masks = [m > 0 for m in slices.masks]
    print(f"{len(masks)} masks of {args.data} ({len(left_out)} known label errors left out)")
    print(f"{'targets':<10}{'size':>6}{'pooled IoU at native size':>28}")
    for soft in (False, True):
        for size in (128, 256):
            targets = preprocess_masks(masks, size, soft=soft)[..., 0]
            back = [to_native(t, m.shape) > 0.5 for t, m in zip(targets, masks)]
            print(f"{'soft' if soft else 'binary':<10}{size:>6}{pooled_iou(back, masks):>28.4f}")
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    for pixels in (1, 2):
        for name, op in (("dilated", cv2.dilate), ("eroded", cv2.erode)):
            moved = [op(m.astype(np.uint8), disc, iterations=pixels) > 0 for m in masks]
            print(f"boundary {name} by {pixels} px: pooled IoU {pooled_iou(moved, masks):.4f}")


if __name__ == "__main__":
    main()

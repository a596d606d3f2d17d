"""Colour patches of the two photographs that ship inside scikit-learn: an offline colour data set.

``sklearn.datasets.load_sample_images()`` holds two 427x640 RGB photographs (a Chinese temple and a
flower). Each is shrunk by 2 (box filter, 213x320) and cut into 16x16 patches on a grid of stride 8.
The held-out split is the right fifth of each photograph: ``test`` holds the patches that lie wholly
in columns 256.. of the shrunk image, ``train`` those wholly left of it, so no pixel is in both
(1,550 train and 350 test patches). Nothing is downloaded or written: the patches are cut in
memory when first read, in a fixed order (photograph, row, column).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

PATCH = 16
STRIDE = 8
SHRINK = 2
# Shrunk images are 320 wide: columns from here on are held out.
HELD_OUT_FROM_COLUMN = 256


@functools.cache
def patches(split: str) -> np.ndarray:
    """``uint8 [N, 16, 16, 3]``: the patches of ``split`` (``"train"`` or ``"test"``)."""
    from sklearn.datasets import load_sample_images

    out = []
    for photo in load_sample_images().images:
        h, w = photo.shape[0] // SHRINK, photo.shape[1] // SHRINK
        small = np.asarray(PIL.Image.fromarray(photo).resize((w, h), PIL.Image.Resampling.BOX))
        for top in range(0, h - PATCH + 1, STRIDE):
            for left in range(0, w - PATCH + 1, STRIDE):
                held_out = left >= HELD_OUT_FROM_COLUMN
                if left + PATCH > HELD_OUT_FROM_COLUMN and not held_out:
                    continue  # Straddles the boundary: in neither split.
                if held_out == (split == "test"):
                    out.append(small[top : top + PATCH, left : left + PATCH])
    return np.stack(out)


class PatchSource(Sequence):
    """A random-access source of one split's patches (``source[i] -> {"image": uint8 [16, 16, 3]}``)."""

    def __init__(self, split: str):
        if split not in ("train", "test"):
            raise ValueError(f"Unknown split {split!r} of the photo patches; allowed: train, test.")
        self._images = patches(split)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self._images[index]}

    def __repr__(self) -> str:
        return f"PatchSource({len(self)} patches)"

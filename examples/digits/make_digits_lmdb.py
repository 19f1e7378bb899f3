"""Write scikit-learn's handwritten digits as MNIST-style LMDBs of Caffe Datum records.

The data set (``sklearn.datasets.load_digits``) has 1797 grey 8x8 images with values
0..16 in 10 classes. Each image becomes a 28x28 single-channel uint8 image the way
MNIST is laid out:

1. values are scaled to 0..255 (``round(v * 255 / 16)``);
2. the 8x8 image is enlarged to 20x20 by bilinear interpolation between pixel
   centres (edge pixels repeat outwards), rounded to uint8;
3. the 20x20 image is centred on a black 28x28 canvas, with a 4-pixel border.

The split is deterministic. In each class, a shuffle with a fixed seed puts 36 images
in the test set and the rest in the training set. The test set thus has 360 images
(36 per class), and the training set 1437. Each set is then shuffled with a fixed
seed, because a Data layer reads records in key order. Keys are the record index
written as ``%08d``, as Caffe's convert_mnist_data writes them.

Usage::

    python examples/digits/make_digits_lmdb.py [--out DIR] [--force]

writes DIR/digits_train_lmdb and DIR/digits_test_lmdb (DIR defaults to this file's
folder) unless both exist already; ``--force`` writes them again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np

TRAIN_NAME = "digits_train_lmdb"
TEST_NAME = "digits_test_lmdb"
TEST_PER_CLASS = 36
SPLIT_SEED = 20240601
CANVAS = 28
BOX = 20

logger = logging.getLogger("make_digits_lmdb")


def upsample_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Return a square float image enlarged to ``size`` x ``size`` by bilinear interpolation.

    Output pixel centres map onto input coordinates with the half-pixel convention,
    ``x_in = (x_out + 0.5) * n / size - 0.5``, clamped to the image.
    """
    n = image.shape[0]
    coords = (np.arange(size) + 0.5) * n / size - 0.5
    coords = np.clip(coords, 0, n - 1)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, n - 1)
    weight = coords - low
    rows = image[low] * (1 - weight)[:, None] + image[high] * weight[:, None]
    return rows[:, low] * (1 - weight)[None, :] + rows[:, high] * weight[None, :]


def digit_to_canvas(image: np.ndarray) -> np.ndarray:
    """Return one 8x8 digit (values 0..16) as a 1 x 28 x 28 uint8 array."""
    scaled = np.round(image.astype(np.float64) * 255.0 / 16.0)
    box = np.clip(np.round(upsample_bilinear(scaled, BOX)), 0, 255).astype(np.uint8)
    canvas = np.zeros((1, CANVAS, CANVAS), dtype=np.uint8)
    border = (CANVAS - BOX) // 2
    canvas[0, border : border + BOX, border : border + BOX] = box
    return canvas


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, test) index arrays: 36 test images per class, the rest train."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        members = members[rng.permutation(len(members))]
        test.extend(members[:TEST_PER_CLASS])
        train.extend(members[TEST_PER_CLASS:])
    train = np.asarray(train)[rng.permutation(len(train))]
    test = np.asarray(test)[rng.permutation(len(test))]
    return train, test


def write_split(path: str, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    """Write the images at ``indices`` into a new LMDB at ``path``."""
    from brewnet.data.datum import array_to_datum
    from brewnet.data.db import LMDBWriter

    with LMDBWriter(path, overwrite=True) as writer:
        for record, index in enumerate(indices):
            datum = array_to_datum(digit_to_canvas(images[index]), int(labels[index]))
            writer.put(f"{record:08d}", datum.SerializeToString())
    logger.info("wrote %d records to %s", len(indices), path)


def make_digits_lmdb(out_dir: str) -> tuple[str, str]:
    """Write both LMDBs into ``out_dir``, replacing existing ones; return their paths."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, test = split_indices(digits.target)
    os.makedirs(out_dir, exist_ok=True)
    train_path = os.path.join(out_dir, TRAIN_NAME)
    test_path = os.path.join(out_dir, TEST_NAME)
    write_split(train_path, digits.images, digits.target, train)
    write_split(test_path, digits.images, digits.target, test)
    return train_path, test_path


def ensure_digits_lmdb(out_dir: str) -> tuple[str, str]:
    """Return the (train, test) LMDB paths in ``out_dir``, writing them if either is missing."""
    train_path = os.path.join(out_dir, TRAIN_NAME)
    test_path = os.path.join(out_dir, TEST_NAME)
    present = all(os.path.exists(os.path.join(p, "data.mdb")) for p in (train_path, test_path))
    if present:
        logger.info("digits LMDBs already exist in %s", out_dir)
        return train_path, test_path
    return make_digits_lmdb(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        default=os.path.dirname(os.path.abspath(__file__)),
        help="folder that receives digits_train_lmdb and digits_test_lmdb "
        "(default: this script's folder)",
    )
    parser.add_argument(
        "--force", action="store_true", help="write the databases even if they exist"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.force:
        paths = make_digits_lmdb(args.out)
    else:
        paths = ensure_digits_lmdb(args.out)
    for path in paths:
        logger.info("%s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small real-format data sets written to disk, so the real loading code runs without a download."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def write_mnist(root: Path, samples: int, seed: int = 0) -> Path:
    """MNIST's idx files (train and t10k) as torchvision.datasets.MNIST reads them."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", samples), ("t10k", max(1, samples // 5))):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return root


def write_cifar10(root: Path, samples_per_batch: int, seed: int = 0) -> Path:
    """CIFAR-10's python pickles (5 training batches, a test batch, the meta file)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, size=(samples_per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, size=samples_per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return root


def write_image_folder(root: Path, classes: int, per_class: int, side: int = 40, seed: int = 0) -> Path:
    """root/<class>/<n>.png, as torchvision.datasets.ImageFolder reads it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(side, side + 8, 3), dtype=np.uint8)  # not square: Resize+Crop
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root

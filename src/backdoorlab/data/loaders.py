"""Dataset readers: embedded digits, and MNIST / CIFAR-10 / GTSRB from local files.

For each of mnist / cifar10 / gtsrb the loader looks in ``data_dir`` for, in order:
1. the ready ``.npz`` archives of ``../shared/data`` (``mnist.npz``, ``cifar10_subset.npz``,
   ``gtsrb_subset.npz``; checked against the sha256 in that folder's README), or a full
   ``cifar10.npz`` / ``gtsrb.npz`` of the same layout;
2. the official file formats: MNIST IDX ``.gz``; CIFAR-10 python batches
   (``cifar-10-batches-py/``, read with a restricted unpickler that only admits plain
   containers, bytes and numpy arrays); GTSRB ``Final_Training/Images/<class>/*.ppm`` + CSVs.
``download(name, data_dir)`` fetches the official files for users who are online (checksums
verified); it is never called implicitly and not exercised in tests.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io as _io
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import DatasetInfo, ImageDataset

DEFAULT_DATA_DIR = Path("~/.cache/backdoorlab").expanduser()

INFOS = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), tuple(str(i) for i in range(10))),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                            "ship", "truck")),
    "gtsrb": DatasetInfo("gtsrb", (3, 32, 32), 43, (0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669),
                         tuple(str(i) for i in range(43))),
}
NPZ_FILES = {"mnist": ["mnist.npz"], "cifar10": ["cifar10_subset.npz", "cifar10.npz"],
             "gtsrb": ["gtsrb_subset.npz", "gtsrb.npz"]}
NPZ_SHA256 = {
    "mnist.npz": "094b831e432331f1f6d6829ab9bfff4551410a81e1f816c9cce482d3e9b3ba57",
    "cifar10_subset.npz": "04bde7bb4b17459bc5ce6c2db37e3b6470bfc2e631ca4f82ee50d86edb5e39a8",
    "gtsrb_subset.npz": "0693f4561e4b4fd466b0c8ca3ee7f24100fb94a44f3ab6aa24d675944f76f131",
}
# Official sources (md5 as published by the data owners).
DOWNLOADS = {
    "mnist": [("https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
              ("https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
              ("https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
              ("https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")],
    "cifar10": [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")],
    "gtsrb": [("https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/GTSRB_Final_Training_Images.zip",
               "f33fd80ac59bff73c82d25ab499e03a3")],
}
DATASETS = ("digits", "mnist", "cifar10", "gtsrb")


class DataError(ValueError):
    """A dataset file is missing, corrupt or of the wrong format."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_images(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    return t.float().div_(255.0).contiguous()


def load_digits(split: str = "train") -> ImageDataset:
    """scikit-learn's bundled 8x8 digits as 1x8x8 in [0,1]; fixed stratified 70/30 split."""
    from sklearn.datasets import load_digits as _ld
    from sklearn.model_selection import train_test_split

    d = _ld()
    x = torch.from_numpy(d.images / 16.0).float().unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=d.target, random_state=0)
    mean, std = float(x[idx_tr].mean()), float(x[idx_tr].std())
    info = DatasetInfo("digits", (1, 8, 8), 10, (round(mean, 4),), (round(std, 4),),
                       tuple(str(i) for i in range(10)))
    idx = torch.from_numpy(idx_tr if split == "train" else idx_te)
    return ImageDataset(x[idx], y[idx], info, name=f"digits[{split}]")


def _load_npz(path: Path, name: str, split: str) -> ImageDataset:
    expected = NPZ_SHA256.get(path.name)
    if expected is not None and _sha256(path) != expected:
        raise DataError(f"{path}: sha256 does not match the published checksum; the file is corrupt or "
                        "truncated. Copy it again from ../shared/data (see its README).")
    try:
        with np.load(path, allow_pickle=False) as d:
            x, y = d[f"x_{split}"], d[f"y_{split}"]
    except Exception as e:  # zip errors, missing keys, pickled object arrays
        raise DataError(f"{path}: cannot read x_{split}/y_{split} ({e}). Expected an .npz with uint8 images "
                        "as in ../shared/data/README.md.") from None
    info = INFOS[name]
    ds = ImageDataset(_to_images(x), torch.from_numpy(y.astype(np.int64)), info, name=f"{name}[{split}]")
    if tuple(ds.x.shape[1:]) != info.input_shape:
        raise DataError(f"{path}: images have shape {tuple(ds.x.shape[1:])}, expected {info.input_shape}.")
    return ds


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims).copy()
    except Exception as e:
        raise DataError(f"{path}: corrupt or truncated MNIST IDX file ({e}). Download it again.") from None


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits only numpy arrays/dtypes besides plain containers and bytes; refuses anything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _ArraysOnlyUnpickler(_io.BytesIO(f.read()), encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as e:
        raise DataError(f"{path}: not a readable CIFAR-10 python batch ({e}).") from None


def _read_ppm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    parts, pos = [], 0
    while len(parts) < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        parts.append(data[pos:end])
        pos = end
    if parts[0] != b"P6" or int(parts[3]) != 255:
        raise DataError(f"{path}: only binary 8-bit PPM (P6) is supported.")
    w, h = int(parts[1]), int(parts[2])
    return np.frombuffer(data, np.uint8, count=w * h * 3, offset=pos + 1).reshape(h, w, 3)


def _load_official(name: str, root: Path, split: str) -> ImageDataset | None:
    info = INFOS[name]
    if name == "mnist":
        pre = "train" if split == "train" else "t10k"
        xi, yi = root / f"{pre}-images-idx3-ubyte.gz", root / f"{pre}-labels-idx1-ubyte.gz"
        if not xi.exists():
            return None
        x, y = _read_idx(xi), _read_idx(yi).astype(np.int64)
    elif name == "cifar10":
        d = root / "cifar-10-batches-py"
        if not d.is_dir():
            return None
        files = [d / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [d / "test_batch"]
        xs, ys = zip(*(_read_cifar_batch(f) for f in files))
        x, y = np.concatenate(xs), np.concatenate(ys)
    else:
        d = root / "GTSRB" / ("Final_Training" if split == "train" else "Final_Test") / "Images"
        if not d.is_dir():
            return None
        images, labels = [], []
        csvs = sorted(d.glob("*/GT-*.csv")) if split == "train" else [root / "GTSRB" / "Final_Test" / "GT-final_test.csv"]
        for c in csvs:
            with open(c, newline="") as f:
                for row in csv.DictReader(f, delimiter=";"):
                    img = torch.from_numpy(_read_ppm(c.parent / row["Filename"]).copy()).permute(2, 0, 1)
                    img = F.interpolate(img[None].float(), size=(32, 32), mode="bilinear", align_corners=False)
                    images.append(img[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
                    labels.append(int(row["ClassId"]))
        x, y = np.stack(images), np.asarray(labels, dtype=np.int64)
    return ImageDataset(_to_images(x), torch.from_numpy(y), info, name=f"{name}[{split}]")


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None) -> ImageDataset:
    """Load split ``train`` or ``test`` of ``digits``, ``mnist``, ``cifar10`` or ``gtsrb``."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}; got {name!r}.")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    if name == "digits":
        return load_digits(split)
    root = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DATA_DIR
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist. Pass --data-dir pointing at a folder with "
                        f"{NPZ_FILES[name][0]} (e.g. ../shared/data) or the official {name} files, or run "
                        f"`backdoorlab download {name} --data-dir DIR` when online.")
    for fname in NPZ_FILES[name]:
        if (root / fname).exists():
            return _load_npz(root / fname, name, split)
    ds = _load_official(name, root, split)
    if ds is None:
        raise DataError(f"no {name} data in {root}: expected {' or '.join(NPZ_FILES[name])} or the official "
                        f"files. Get them with `backdoorlab download {name} --data-dir {root}`.")
    return ds


def download(name: str, data_dir: str | Path | None = None) -> Path:  # pragma: no cover - needs network
    """Fetch the official files of ``name`` into ``data_dir`` and verify their md5."""
    import tarfile
    import urllib.request
    import zipfile

    root = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DATA_DIR
    root.mkdir(parents=True, exist_ok=True)
    for url, md5 in DOWNLOADS[name]:
        dest = root / url.rsplit("/", 1)[1]
        if not dest.exists():
            tmp = dest.with_suffix(dest.suffix + ".part")
            urllib.request.urlretrieve(url, tmp)
            tmp.replace(dest)
        if hashlib.md5(dest.read_bytes()).hexdigest() != md5:
            dest.unlink()
            raise DataError(f"{dest}: checksum mismatch after download from {url}; try again.")
        if dest.suffix == ".gz" and dest.name.endswith(".tar.gz"):
            with tarfile.open(dest) as t:
                t.extractall(root, filter="data")
        elif dest.suffix == ".zip":
            with zipfile.ZipFile(dest) as z:
                z.extractall(root)
    return root

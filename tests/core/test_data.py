import numpy as np
import pytest
import torch

from backdoorlab.attacks import BadNets
from backdoorlab.data import DataError, ImageDataset, PoisonedDataset, as_tensors, clean_subset, load_dataset
from backdoorlab.triggers import PatchTrigger


def test_digits_split_is_fixed_and_stratified():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and len(te) == 540
    assert tr.x.shape[1:] == (1, 8, 8) and 0 <= tr.x.min() and tr.x.max() <= 1
    counts = torch.bincount(te.y, minlength=10)
    assert counts.min() >= 52 and counts.max() <= 55  # 30% of 174..183
    assert torch.equal(load_dataset("digits", "train").y, tr.y)


def test_poisoned_view_is_lazy_and_keeps_ground_truth():
    x = torch.zeros(10, 1, 4, 4)
    y = torch.arange(10) % 3
    base = ImageDataset(x, y)
    trig = PatchTrigger.square((1, 4, 4), 1, "top-left", margin=0)
    view = PoisonedDataset(base, [7, 2], trig, relabel=[1, 1, 1])
    assert torch.equal(view.indices, torch.tensor([2, 7]))
    xi, yi = view[2]
    assert xi[0, 0, 0] == 1 and int(yi) == 1
    xi, yi = view[3]
    assert xi.sum() == 0 and int(yi) == 0
    xt, yt = view.tensors()
    assert xt.sum() == 2 and base.x.sum() == 0  # base untouched
    assert yt.tolist() == [0, 1, 1, 0, 1, 2, 0, 1, 2, 0]


def test_badnets_rate_and_targets(digits):
    train, _ = digits
    trig = PatchTrigger.badnets_pattern((1, 8, 8))
    p = BadNets(trigger=trig, target=4, rate=0.1).poison(train, generator=torch.Generator().manual_seed(0))
    assert len(p.poison_indices) == round(0.1 * len(train))
    assert (train.y[p.poison_indices] != 4).all()
    _, y = p.dataset.tensors()
    assert (y[p.poison_indices] == 4).all()
    a2a = BadNets(trigger=trig, all_to_all=True, rate=0.2).poison(train, generator=torch.Generator().manual_seed(0))
    _, y2 = a2a.dataset.tensors()
    idx = a2a.poison_indices
    assert torch.equal(y2[idx], (train.y[idx] + 1) % 10)
    with pytest.raises(ValueError, match=r"BadNets.rate must be in \(0.0, 1.0\]"):
        BadNets(trigger=trig, rate=0.0)
    with pytest.raises(ValueError, match="BadNets.target must be < the number of classes"):
        BadNets(trigger=trig, target=12).poison(train)


def test_clean_subset_per_class_and_fraction(digits):
    train, _ = digits
    s = clean_subset(train, per_class=3, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(s.y).tolist() == [3] * 10
    f = clean_subset(train, fraction=0.1, generator=torch.Generator().manual_seed(0))
    assert abs(len(f) - 126) <= 5


def test_bad_images_messages():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]; got min=-2.1.*normalization inside the model"):
        ImageDataset(torch.full((2, 1, 4, 4), -2.1), torch.zeros(2, dtype=torch.long))
    bad = torch.zeros(2, 1, 4, 4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="must not contain NaN"):
        ImageDataset(bad, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must have shape \(N, C, H, W\)"):
        ImageDataset(torch.zeros(4, 4), torch.zeros(4, dtype=torch.long))


def test_missing_data_dir_message(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data-dir"):
        load_dataset("mnist", "train", tmp_path / "nope")
    with pytest.raises(DataError, match="no mnist data in"):
        load_dataset("mnist", "train", tmp_path)


def test_corrupt_npz_named(tmp_path):
    (tmp_path / "gtsrb.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="gtsrb.npz: cannot read"):
        load_dataset("gtsrb", "test", tmp_path)


def test_idx_and_cifar_pickle_readers(tmp_path):
    import gzip
    import pickle
    import struct

    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBBIII", 0, 8, 3, 2, 28, 28) + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBBI", 0, 8, 1, 2) + bytes([3, 7]))
    ds = load_dataset("mnist", "test", tmp_path)
    assert ds.y.tolist() == [3, 7] and ds.x[0, 0, 0, 1] == pytest.approx(1 / 255)

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}
    (d / "test_batch").write_bytes(pickle.dumps(batch))
    ds = load_dataset("cifar10", "test", tmp_path)
    assert ds.y.tolist() == [1, 2] and ds.x.shape == (2, 3, 32, 32)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (d / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar10", "test", tmp_path)


@pytest.mark.slow
def test_shared_npz_archives(shared_data):
    m = load_dataset("mnist", "test", shared_data)
    assert m.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(m.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    tr = load_dataset("mnist", "train", shared_data)
    assert float(tr.x.mean()) == pytest.approx(0.1307, abs=1e-4)
    g = load_dataset("gtsrb", "test", shared_data)
    assert g.x.shape == (4210, 3, 32, 32) and g.info.num_classes == 43
    c = load_dataset("cifar10", "train", shared_data)
    assert c.y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]

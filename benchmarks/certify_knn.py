"""Benchmark for issue 9: certified kNN / rNN against data poisoning (Jia, Liu, Cao, Gong, AAAI 2022).

Certified accuracy vs poisoning size on MNIST (all 60,000 training images) and the CIFAR-10 subset
(10,000 training images), raw pixels in [0, 1], beside the seed's figures (MNIST ~70% at 500
poisoned samples, CIFAR-10 ~30% at 200).  Unit: operations (insert, delete or modify one sample).

    .venv/bin/python benchmarks/certify_knn.py [--test 1000]
"""
from __future__ import annotations

import argparse
import time

import torch

from _certify_common import DATA, header, table, threads, write

from backdoorlab.certify.knn import (CertifiedKNN, CertifiedRNN, neighbour_votes,  # noqa: E402
                                     pairwise_distances, rnn_joint_curve)
from backdoorlab.data import load_dataset  # noqa: E402

SETTINGS = {
    "mnist": {"ks": [200, 1000, 3000, 5000, 8000], "rs": [5.0, 6.0, 7.0],
              "sizes": [0, 50, 100, 200, 300, 400, 500, 600, 800, 1000], "seed": (500, 0.70)},
    "cifar10": {"ks": [100, 500, 1000, 2000], "rs": [12.0, 14.0, 16.0],
                "sizes": [0, 10, 25, 50, 100, 150, 200, 300], "seed": (200, 0.30)},
}
VARIANT_KS = [1000, 2000, 3000, 4000, 5000, 6000, 8000]   # the MNIST variants' k sweep
VARIANT_RS = [6.0, 7.0, 8.0, 9.0]                          # and their rNN radii


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--test", type=int, default=1000, help="test images per dataset (random, seed 0)")
    ap.add_argument("--datasets", default="mnist,cifar10")
    ap.add_argument("--variants", action=argparse.BooleanOptionalAction, default=True,
                    help="the MNIST study of why we are below the seed's ~70%% (feature space, k, unit, joint)")
    args = ap.parse_args()
    threads()
    lines: list[str] = []
    curves = {}
    for name in args.datasets.split(","):
        cfg = SETTINGS[name]
        train, test = load_dataset(name, "train", DATA), load_dataset(name, "test", DATA)
        sel = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.test]
        xt, yt = test.x[sel], test.y[sel]
        rows = []
        variants = name == "mnist" and args.variants
        # one pass of raw-pixel distances serves every k and r of this dataset (the variants' raw-pixel rows too)
        t0 = time.perf_counter()
        knn, rnn = neighbour_votes(train.x, train.y, xt, ks=cfg["ks"] + (VARIANT_KS if variants else []),
                                   rs=cfg["rs"] + (VARIANT_RS if variants else []),
                                   num_classes=train.info.num_classes)
        sec = (time.perf_counter() - t0) / (len(knn) + len(rnn))   # the shared pass per certifier
        for k in cfg["ks"]:
            _row(rows, curves, name, f"kNN k={k}", CertifiedKNN.from_votes(knn[k]), yt, cfg["sizes"], sec)
        for r in cfg["rs"]:
            _row(rows, curves, name, f"rNN r={r}", CertifiedRNN(r=r).from_votes(rnn[r]), yt, cfg["sizes"], sec)
        e, ref = cfg["seed"]
        best = max(rows, key=lambda r: float(r[1 + cfg["sizes"].index(e)]))
        lines += [f"## {name}: {len(train)} training images, {len(xt)} random test images", "",
                  f"Certified accuracy (%) at poisoning size e; seed 000 quotes about {100 * ref:.0f}% at e = {e}. "
                  f"Best here at e = {e}: **{best[1 + cfg['sizes'].index(e)]}%** ({best[0]}).", ""]
        lines += table(["certifier"] + [f"e={s}" for s in cfg["sizes"]] + ["median e*", "seconds"], rows)
        if variants:
            rest = torch.ones(len(test), dtype=torch.bool)
            rest[sel] = False
            lines += _variants(train, xt, yt, test.x[rest], test.y[rest], knn, rnn)
    _plot(curves)
    lines = header("Certified kNN / rNN against data poisoning (issue 9)",
                   f".venv/bin/python benchmarks/certify_knn.py --test {args.test} --datasets {args.datasets}"
                   + ("" if args.variants else " --no-variants")) + [
        "Jia et al.'s intrinsic certificate: a kNN prediction survives e poisoning operations while "
        "s_a - s_b - 1[b < a] > 2e - 1 (each operation swaps at most one neighbour).  rNN abstains on an "
        "empty ball.  Raw pixels, L2; distances = one matrix product per test batch against the whole "
        "training set, computed once per dataset and shared by every k and r ('seconds' = that pass divided by the "
        "certifiers it serves).  The paper's exact k / r per figure were not retrievable here; we sweep them.", ""] + lines
    write("certify_knn", lines)


def _row(rows, curves, name, label, cert, yt, sizes, sec) -> None:
    curve = cert.curve(yt, sizes)
    curves[(name, label)] = curve
    rows.append([label] + [f"{100 * a:.1f}" for _, a in curve] + [cert.median_tolerance(yt), f"{sec:.1f}"])
    print(name, label, rows[-1], flush=True)


def _blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur of every image (a fixed, data-independent map: the certificate stays valid)."""
    t = torch.arange(-2, 3, dtype=torch.float32)
    k1 = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k1 = k1 / k1.sum()
    k = (k1[:, None] * k1[None])[None, None].repeat(x.shape[1], 1, 1, 1)
    return torch.nn.functional.conv2d(x, k, padding=2, groups=x.shape[1])


RAW = "raw pixels, L2"
FEATURES = {
    RAW: lambda x: x,
    "pixels / ||x|| (cosine)": lambda x: x.flatten(1) / x.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-8),
    "Gaussian blur sigma=1, L2": _blur,
    "2x2 average pool (14x14), L2": lambda x: torch.nn.functional.avg_pool2d(x, 2),
}


def _extractor(px: torch.Tensor, py: torch.Tensor):
    """An MLP (784-256-256-10) trained on clean images the attacker never touches (the MNIST test
    images not used for evaluation); its penultimate layer is the kNN feature space."""
    from backdoorlab.data.datasets import ImageDataset
    from backdoorlab.models import build
    from backdoorlab.training import fit, init_weights

    g = torch.Generator().manual_seed(0)
    model = init_weights(build("mlp", input_shape=(1, 28, 28), num_classes=10, hidden=[256, 256]), g)
    fit(model, ImageDataset(px, py), epochs=5, batch_size=128, lr=0.05, generator=g)
    model.eval()

    @torch.no_grad()
    def feats(x):
        return torch.cat([model.features(x[i:i + 4096]) for i in range(0, len(x), 4096)])
    return feats


def _variants(train, xt, yt, px, py, raw_knn, raw_rnn) -> list[str]:
    """Measured variants behind the gap to the seed's ~70% at e = 500 (issue 9 acceptance).
    ``raw_knn`` / ``raw_rnn``: the raw-pixel votes of ``neighbour_votes`` for VARIANT_KS / VARIANT_RS
    (the main table's distance pass; not recomputed here)."""
    e_cols = [0, 100, 200, 300, 500, 800]
    ks = VARIANT_KS
    rows, best = [], ("", -1.0)
    t0 = time.perf_counter()
    feats = _extractor(px, py)
    print(f"extractor trained on {len(px)} held-out clean images in {time.perf_counter() - t0:.0f}s", flush=True)
    features = dict(FEATURES)
    features[f"penultimate layer of an MLP trained on {len(px)} other clean images, L2"] = feats
    for fname, f in features.items():
        t0 = time.perf_counter()
        if fname == RAW:
            certs = {k: CertifiedKNN.from_votes(raw_knn[k]) for k in ks}
        else:
            certs = CertifiedKNN(k=ks[0]).certify_many(f(train.x), train.y, f(xt), ks, num_classes=10)
        sec = time.perf_counter() - t0
        for k in ks:
            c = certs[k]
            acc = [c.certified_accuracy(yt, e) for e in e_cols]
            rows.append([fname, k] + [f"{100 * a:.1f}" for a in acc] + [c.median_tolerance(yt)])
            if acc[e_cols.index(500)] > best[1]:
                best = (f"kNN k={k}, {fname}", acc[e_cols.index(500)])
        print("variant", fname, f"{sec:.0f}s", rows[-len(ks):], flush=True)
    out = ["### Why below the seed's ~70%: measured variants (MNIST, same test images)", "",
           "(1) Feature space and k.  Any feature map the attacker cannot influence keeps the certificate valid: a "
           "fixed, data-independent map of the pixels (a map fitted on the training data, e.g. PCA, would itself be "
           "poisonable).  The last feature space is learned, but on clean images the attacker cannot touch (the "
           "MNIST test images outside the evaluated 1000), as a pre-trained or self-supervised encoder would be: "
           "the certificate then holds for poisoning of the kNN's training set only.  Certified accuracy (%) at e "
           "poisoning operations:", ""]
    out += table(["features", "k"] + [f"e={e}" for e in e_cols] + ["median e*"], rows)
    out += [f"Best kNN at e = 500: **{100 * best[1]:.1f}%** ({best[0]}).", ""]
    # (2) unit and (3) joint certificate for rNN
    rows2 = []
    dists = pairwise_distances(xt)   # one test-to-test matrix for every r and unit
    for r in VARIANT_RS:
        for unit in ("operations", "insert-delete"):
            c = CertifiedRNN(r=r, unit=unit).from_votes(raw_rnn[r])
            ind = c.curve(yt, e_cols)
            joint = rnn_joint_curve(c, xt, yt, r, e_cols, unit=unit, dists=dists)
            rows2.append([f"rNN r={r}", unit, "individual"] + [f"{100 * a:.1f}" for _, a in ind])
            rows2.append([f"rNN r={r}", unit, "joint (groups > 2r apart)"] + [f"{100 * a:.1f}" for _, a in joint])
            print("rnn", rows2[-2:], flush=True)
    out += ["(2) Unit and (3) joint certification (rNN).  'operations': a modification counts 1 (it moves two "
            "votes); 'insert-delete': only insertions/deletions, a modification counts 2 (DPA's unit).  For kNN "
            "the unit does not matter: an insertion, a deletion and a modification each close the vote gap by at "
            "most 2 (k is fixed, the displaced neighbour may be of the predicted class).  Joint: a lower bound on "
            "the fraction correct *simultaneously* (see `rnn_joint_curve`): inputs more than 2r apart share no "
            "poisoned point, so the budget is split among them.", ""]
    out += table(["certifier", "unit", "certificate"] + [f"e={e}" for e in e_cols], rows2)
    i5 = 3 + e_cols.index(500)
    raw = max(float(r[2 + e_cols.index(500)]) for r in rows if r[0] == RAW)
    fixed = max((float(r[2 + e_cols.index(500)]), r[0], r[1]) for r in rows
                if r[0] in FEATURES and r[0] != RAW)
    learned = max((float(r[2 + e_cols.index(500)]), r[1]) for r in rows if r[0] not in FEATURES)
    rnn_ops = max(float(r[i5]) for r in rows2 if r[1] == "operations" and r[2] == "individual")
    rnn_ins = max(float(r[i5]) for r in rows2 if r[1] == "insert-delete" and r[2] == "individual")
    gain = max(float(j[i5]) - float(i[i5]) for i, j in zip(rows2[::2], rows2[1::2]))
    out += ["### Conclusion for the acceptance item (MNIST, e = 500, seed ~70%)", "",
            f"- Raw pixels, L2 (the setting we can reproduce): best kNN **{raw:.1f}%**, best rNN {rnn_ops:.1f}% "
            f"(operations) — **not within 10 pt of ~70%**.",
            "- The certificate is not the cause: it is Jia et al.'s vote-gap bound, checked against brute force over "
            "every poisoning of size <= 2 in tests/certify/test_knn.py, and a larger k only trades clean accuracy "
            "for gap (the k sweep peaks near k = 4000-5000).",
            f"- Unit: for kNN none (each operation closes the gap by at most 2).  For rNN, counting insertions / "
            f"deletions only (a modification = 2) raises the best rNN to {rnn_ins:.1f}%.",
            f"- Joint certification of rNN adds at most {gain:.1f} pt here: MNIST test digits are mostly within 2r of "
            "each other at any r that classifies well, so a poisoned point can sit in many test balls.",
            f"- Feature space moves it most: a fixed map reaches {fixed[0]:.1f}% ({fixed[1]}, k={fixed[2]}); an encoder "
            f"trained on other clean images reaches **{learned[0]:.1f}%** (k={learned[1]}).",
            "- Our reading: the seed's ~70% (and ~30% at 200 on CIFAR-10, where raw-pixel kNN is below 30% even "
            "unattacked on our 10,000-image subset) is not reachable with raw-pixel L2 neighbours and the full "
            "per-operation unit; it needs a better feature space, a weaker unit, or both.  We could not retrieve the "
            "paper's experimental section here (only its abstract and introduction), so which of these the paper "
            "used is not verified.", ""]
    return out


def _plot(curves) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    from _certify_common import RESULTS

    for name in {n for n, _ in curves}:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for (n, label), c in curves.items():
            if n == name:
                ax.plot([e for e, _ in c], [a for _, a in c], label=label)
        ax.set_xlabel("poisoned training samples e")
        ax.set_ylabel("certified accuracy")
        ax.set_title(f"{name}: certified kNN / rNN")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / f"certify_knn_{name}.png", dpi=90)
        plt.close(fig)


if __name__ == "__main__":
    main()

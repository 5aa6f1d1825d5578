"""Activation clustering (Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy, Srivastava,
"Detecting Backdoor Attacks on Deep Neural Networks by Activation Clustering", SafeAI@AAAI 2019).

Threat model: the defender holds the (possibly poisoned) training set and a model trained on it;
no clean data is needed.

The method (paper, section 4), for every label y:
  (1) A_y = activations of the last hidden layer for the training inputs labelled y
      (here ``model.features``);
  (2) reduce A_y to ``n_components`` (10) dimensions — ICA in the paper, PCA offered;
  (3) split the reduced activations into 2 clusters with k-means;
  (4) decide which cluster, if any, is poison:
      * relative size: a cluster holding less than ``size_threshold`` (0.35) of the class;
      * silhouette: the class is poisoned when the 2-means fit is good — silhouette score
        s = mean_i (b_i - a_i) / max(a_i, b_i) ≥ ``silhouette_threshold`` — and then the smaller
        cluster is the poison (ART's combination of the two);
      * exclusion (exclusionary reclassification): the paper trains a model without the cluster
        and asks whether the cluster is classified as label y (clean) or as other labels (poison,
        which keeps its source-class content).  We ask the same question of the given model,
        with label y left out.  Per sample, e_i = max_{c≠y} z_c(x_i) (z = logits: the evidence for
        the best other label); the candidate is the cluster with the larger mean e, and the class
        is poisoned when the fit is good (s ≥ ``silhouette_threshold``) and the clusters differ in
        that evidence by at least ``exclusion_threshold`` pooled standard deviations,
            g = (mean_A e - mean_B e) / sqrt((var_A e + var_B e) / 2).
  (5) remove the poison clusters and retrain (``defenses.sanitize.retrain``).

Deviations:
  * The "exclusion" analysis (the default) replaces the paper's retraining by one forward pass:
    retraining per cluster would cost one training run per class.  It is what makes the method
    work when the poison is about half of the target class (an all-to-one attack on 10% of the
    training set): there the two clusters have the same size, and the size rules flip a coin
    (BackdoorBench uses "smaller cluster"; see ``benchmarks/results/sanitize.md``).
  * PCA is the default reduction: on our models 10-dimensional FastICA split the poisoned class
    less cleanly than PCA (``reduce="ica"`` gives the paper's choice).
  * The silhouette score is computed on at most ``silhouette_samples`` samples of each class
    (a fixed, seeded subsample), as ART does, to keep it O(n).
  * ``SampleScores.scores`` is the class's silhouette score for samples of the candidate poison
    cluster and 0 elsewhere; ``threshold`` is ``silhouette_threshold`` (None for "relative-size").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._validation import one_of
from ...roles import Sanitizer
from ...types import SampleScores
from ._representations import (check_fields, class_indices, evidence_gap, other_label_evidence, principal_axes,
                               representations)

__all__ = ["ActivationClustering", "ANALYSES"]

ANALYSES = ("relative-size", "silhouette", "exclusion")


@dataclass(frozen=True, kw_only=True)
class ActivationClustering(Sanitizer):
    """Activation clustering.

    n_components:         dimensions after reduction (paper: 10).
    reduce:               "pca" or "ica" (paper: ICA).
    analysis:             "exclusion", "silhouette" or "relative-size" (step 4).
    size_threshold:       relative size below which a cluster is small (ART: 0.35).
    silhouette_threshold: silhouette score at or above which a class counts as split in two.
    exclusion_threshold:  "exclusion" only: smallest gap g (pooled standard deviations) in the
                          other-label evidence between the two clusters.
    silhouette_samples:   per-class subsample for the silhouette score.
    seed:                 random state of k-means / ICA / the subsample (results are deterministic).
    batch_size:           batch size for computing activations (no effect on the result).
    """

    n_components: int = 10
    reduce: str = "pca"
    analysis: str = "exclusion"
    size_threshold: float = 0.35
    silhouette_threshold: float = 0.30
    exclusion_threshold: float = 1.0
    silhouette_samples: int = 2000
    seed: int = 0
    batch_size: int = 512

    def __post_init__(self) -> None:
        check_fields(self, n_components="int+", size_threshold=(0.0, 0.5, True, False),
                     silhouette_threshold=(-1.0, 1.0, False, False), silhouette_samples="int+",
                     exclusion_threshold="+", batch_size="int+")
        one_of("ActivationClustering", "reduce", self.reduce, {"pca", "ica"})
        one_of("ActivationClustering", "analysis", self.analysis, set(ANALYSES))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"ActivationClustering.seed must be a non-negative integer; got {self.seed!r}.")

    def scan(self, model: torch.nn.Module, dataset) -> SampleScores:
        R, logits, y = representations(model, dataset, batch_size=self.batch_size, logits=True,
                                       owner="ActivationClustering.scan")   # (1)
        scores = torch.zeros(len(y), dtype=torch.float64)
        flagged = torch.zeros(len(y), dtype=torch.bool)
        for label, idx in class_indices(y):
            if len(idx) < 3:
                continue
            Zy = self._reduce(R[idx])                                        # (2)
            clusters = self._two_means(Zy)                                   # (3)
            sil = self._silhouette(Zy, clusters)
            candidate, poisoned = self._analyse(clusters, sil, logits[idx], label)  # (4)
            in_candidate = clusters == candidate
            scores[idx[in_candidate]] = max(sil, 0.0)
            if poisoned:
                flagged[idx[in_candidate]] = True
        threshold = None if self.analysis == "relative-size" else self.silhouette_threshold
        return SampleScores(scores=scores.float(), flagged=flagged, threshold=threshold)

    # ---- step 2: dimensionality reduction -------------------------------------------------------
    def _reduce(self, A: torch.Tensor) -> torch.Tensor:
        d = max(1, min(self.n_components, A.shape[1], len(A) - 1))
        if self.reduce == "pca":
            M, _, V = principal_axes(A, d)
            return M @ V
        M = A - A.mean(0, keepdim=True)
        import warnings

        from sklearn.decomposition import FastICA

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                                # convergence chatter
            Z = FastICA(n_components=d, whiten="unit-variance", random_state=self.seed,
                        max_iter=500).fit_transform(M.numpy())
        return torch.from_numpy(Z).double()

    # ---- step 3: 2-means ------------------------------------------------------------------------
    def _two_means(self, Z: torch.Tensor) -> torch.Tensor:
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit_predict(Z.numpy())
        return torch.from_numpy(labels).long()

    def _silhouette(self, Z: torch.Tensor, clusters: torch.Tensor) -> float:
        """Silhouette score of the 2-means split, on the reduced activations ``Z`` of one class."""
        if len(torch.unique(clusters)) < 2:
            return 0.0
        g = torch.Generator().manual_seed(self.seed)
        sub = torch.randperm(len(Z), generator=g)[:self.silhouette_samples]
        Zs, cs = Z[sub], clusters[sub]
        if len(torch.unique(cs)) < 2:
            return 0.0
        D = torch.cdist(Zs, Zs)
        same = cs[:, None] == cs[None, :]
        n_same = same.sum(1) - 1                                           # exclude the point itself
        a = (D * same).sum(1) / n_same.clamp_min(1)
        b = (D * ~same).sum(1) / (~same).sum(1).clamp_min(1)
        s = (b - a) / torch.maximum(a, b).clamp_min(torch.finfo(D.dtype).tiny)
        s = torch.where(n_same > 0, s, torch.zeros_like(s))                # singleton clusters: 0
        return float(s.mean())

    # ---- step 4: which cluster is poison --------------------------------------------------------
    def _analyse(self, clusters: torch.Tensor, sil: float, logits: torch.Tensor,
                 label: int) -> tuple[int, bool]:
        sizes = torch.bincount(clusters, minlength=2).double() / len(clusters)
        smaller = int(sizes.argmin())
        small = bool(sizes[smaller] < self.size_threshold)
        good_fit = sil >= self.silhouette_threshold
        if self.analysis == "relative-size":
            return smaller, small
        if self.analysis == "silhouette":
            return smaller, small and good_fit
        e = other_label_evidence(logits, label)                            # max_{c≠y} z_c
        if min(int((clusters == 0).sum()), int((clusters == 1).sum())) < 2:
            return smaller, False
        gap = evidence_gap(e, clusters == 1)                               # cluster 1 vs cluster 0
        return (1 if gap >= 0 else 0), good_fit and abs(gap) >= self.exclusion_threshold

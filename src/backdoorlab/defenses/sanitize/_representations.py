"""What every sanitizer reads: the model's penultimate representations of the training set,
grouped by the (possibly poisoned) training label."""
from __future__ import annotations

import torch

from ..._torch import device_of, eval_mode
from ..._validation import check_images
from ...data import as_tensors


@torch.no_grad()
def representations(model: torch.nn.Module, dataset, *, batch_size: int = 512,
                    logits: bool = False, owner: str = "Sanitizer.scan") -> tuple:
    """``(R, y)`` — or ``(R, logits, y)`` — for every sample of ``dataset``: ``R = model.features(x)``
    (N, D) in float64 on the CPU, in eval mode, batched.  The model is not modified."""
    if not hasattr(model, "features"):
        raise TypeError(f"{owner} needs a backdoorlab model with .features(x) (penultimate "
                        f"activations); got {type(model).__name__}.")
    x, y = as_tensors(dataset)
    check_images(x, f"{owner} dataset")
    if len(y) == 0:
        raise ValueError(f"{owner} dataset must not be empty.")
    dev = device_of(model)
    feats, outs = [], []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            f = model.features(x[i:i + batch_size].to(dev))
            feats.append(f.flatten(1).double().cpu())
            if logits:
                outs.append(model.head(f).double().cpu())
    R = torch.cat(feats)
    if logits:
        return R, torch.cat(outs), y.long().cpu()
    return R, y.long().cpu()


def class_indices(y: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``[(label, indices of that label), ...]`` for every label present in ``y``."""
    return [(int(c), torch.nonzero(y == c).flatten()) for c in torch.unique(y)]


def principal_axes(R: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class PCA shared by the three sanitizers: ``(M, lam, V)`` with ``M = R - mean(R)`` (the
    centred representations), ``lam`` the top-``k`` eigenvalues of ``M^T M / n`` in decreasing
    order and ``V`` (D, k) their eigenvectors (= the top right singular vectors of ``M``)."""
    M = R - R.mean(0, keepdim=True)
    k = max(1, min(k, M.shape[1]))
    evals, evecs = torch.linalg.eigh(M.T @ M / max(len(M), 1))
    return M, evals[-k:].flip(0), evecs[:, -k:].flip(1)


def other_label_evidence(logits: torch.Tensor, label: int) -> torch.Tensor:
    """e_i = max_{c != label} z_c(x_i): how strongly the model sees another label in each sample
    (poison keeps its source-class content; activation clustering's exclusion argument)."""
    other = logits.clone()
    other[:, label] = float("-inf")
    return other.max(1).values


def evidence_gap(e: torch.Tensor, side: torch.Tensor) -> float:
    """(mean e on ``side`` - mean e off it) / pooled standard deviation; 0 when a side has < 2."""
    a, b = e[side], e[~side]
    if min(len(a), len(b)) < 2:
        return 0.0
    pooled = torch.sqrt((a.var() + b.var()) / 2).clamp_min(torch.finfo(e.dtype).tiny)
    return float((a.mean() - b.mean()) / pooled)


def check_fields(obj, **limits) -> None:
    """Shared ``__post_init__`` helper (kept here so the three sanitizers read alike)."""
    from ..._validation import in_range, positive

    name = type(obj).__name__
    for field, spec in limits.items():
        value = getattr(obj, field)
        if spec == "int+":
            positive(name, field, value, integer=True)
        elif spec == "+":
            positive(name, field, value)
        else:
            lo, hi, lo_open, hi_open = spec
            in_range(name, field, value, lo, hi, lo_open=lo_open, hi_open=hi_open)

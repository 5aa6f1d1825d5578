"""Sound bound propagation for ReLU networks in float64: interval (IBP) and CROWN/DeepPoly.

Used by the backdoor-freeness verifier (``certify.freeness``).  The input is a trigger box: for a
batch of B (image, trigger position) pairs, the first pre-activation layer is *exactly*

    z_1 = c_b + A_b t,      t in [t_lo, t_hi]  (the |S| trigger coordinates)            (1)

with c_b = W_1[:, ~S] x_b[~S] + b_1 and A_b = W_1[:, S], so back-substitution stops at z_1 and
concretises over the |S|-dimensional box instead of 784-wide matrices (note section 1.3).

* **IBP**: z_{i+1} in [W+ l + W- u + b, W+ u + W- l + b] after a = relu(z).
* **CROWN / DeepPoly** (Zhang et al. 2018; Singh et al. 2019): each unstable ReLU (l < 0 < u) is
  bounded above by a <= u (z - l) / (u - l) and below by a >= alpha z with alpha = 1 iff u >= -l
  (DeepPoly's adaptive slope); stable ones are exact.  A linear bound Lambda z_i + const is
  back-substituted layer by layer down to (1) and concretised over the box.  Every layer's bounds
  are CROWN intersected with IBP and are used to relax the layers after it.

**Floating point.** Everything is float64.  Each bound is widened outward by
``PAD * (1 + M_i)`` where M_i >= sum of |terms| of any expression for z_i (IBP of |.|), which
dominates the round-off of a float64 evaluation (about depth * width * 2^-53 * M_i) by a
factor > 1000 for any network this package handles.  The bounds are therefore valid for the real
(exact) arithmetic semantics of the given float weights, not only for one rounding of them.

The network is read from the model (``relu_network``): ``Normalize`` -> Flatten -> (Linear |
Conv2d unrolled to a matrix) -> ReLU ... -> Linear.  ``Normalize`` is *not* folded into the
weights (that would round them): trigger coordinates live in normalised space, where the first
layer is W_1 exactly, and the pixel box is mapped there with outward rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

PAD = 1e-9
"""Relative outward padding of every bound (see the module docstring)."""


@dataclass(frozen=True, eq=False)
class ReluNet:
    """z_1 = W_1 v + b_1, a_i = relu(z_i), z_{i+1} = W_{i+1} a_i + b_{i+1}; logits = z_L.

    ``v = (x.flatten() - mean) / std`` is the normalised input (mean 0, std 1 when the model has no
    ``Normalize``).  All tensors float64 on the CPU."""

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    input_shape: tuple[int, ...]
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def widths(self) -> list[int]:
        return [int(w.shape[0]) for w in self.weights]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) pixels -> (N, D) normalised float64 inputs."""
        v = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1)
        return (v - self.mean) / self.std

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        """Float64 forward pass from normalised inputs (N, D)."""
        h = v
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w.T + b
            if i < self.depth - 1:
                h = h.clamp_min(0)
        return h


def relu_network(model: nn.Module, input_shape=None) -> ReluNet:
    """Read a feed-forward ReLU network out of ``model`` (an ``ImageClassifier`` such as ``MLP``, or
    an ``nn.Sequential``).  Supported layers: Normalize (first), Flatten, Linear, Conv2d, ReLU,
    Identity, Dropout.  Raises TypeError naming any other layer."""
    from ..models.base import Normalize

    shape = tuple(int(s) for s in (input_shape or getattr(model, "input_shape", ()) or ()))
    if hasattr(model, "body") and hasattr(model, "head") and hasattr(model, "normalize"):
        mods = [model.normalize, *_flat(model.body), model.head]
    elif isinstance(model, nn.Sequential):
        mods = _flat(model)
    else:
        raise TypeError(f"verification needs an ImageClassifier or nn.Sequential of Linear/Conv2d/ReLU; "
                        f"got {type(model).__name__}.")
    if not shape:
        raise ValueError("relu_network needs input_shape for a plain nn.Sequential; got none.")
    D = int(np.prod(shape))
    mean, std = torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64)
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor] = []
    cur = shape
    pending_relu = True  # an affine layer may follow the input or a ReLU
    for i, m in enumerate(mods):
        if isinstance(m, Normalize):
            if weights or i != 0:
                raise TypeError("Normalize must be the first layer of a verifiable network.")
            mean = m.mean.detach().double().cpu().expand(shape).reshape(-1).clone()
            std = m.std.detach().double().cpu().expand(shape).reshape(-1).clone()
        elif isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)):
            continue
        elif isinstance(m, nn.ReLU):
            if pending_relu:
                raise TypeError("verification needs Linear/Conv2d and ReLU to alternate; got two ReLUs or a "
                                "leading ReLU.")
            pending_relu = True
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            if not pending_relu:
                raise TypeError("verification needs a ReLU between two affine layers.")
            w, b, cur = _affine_matrix(m, cur)
            weights.append(w)
            biases.append(b)
            pending_relu = False
        else:
            raise TypeError(f"verification supports Normalize, Flatten, Linear, Conv2d and ReLU layers; "
                            f"got {type(m).__name__}.")
    if not weights or pending_relu:
        raise TypeError("verification needs a network that ends with a Linear layer (the logits).")
    return ReluNet(tuple(weights), tuple(biases), shape, mean, std)


def _flat(seq: nn.Module) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in seq.children() if isinstance(seq, nn.Sequential) else [seq]:
        out += _flat(m) if isinstance(m, nn.Sequential) else [m]
    return out


def _affine_matrix(m: nn.Module, shape: tuple[int, ...]):
    with torch.no_grad():
        if isinstance(m, nn.Linear):
            w = m.weight.detach().double().cpu().clone()
            b = (m.bias.detach().double().cpu().clone() if m.bias is not None
                 else torch.zeros(w.shape[0], dtype=torch.float64))
            if w.shape[1] != int(np.prod(shape)):
                raise TypeError(f"Linear layer expects {w.shape[1]} inputs; the network gives {int(np.prod(shape))}.")
            return w, b, (w.shape[0],)
        # Conv2d: unroll exactly; each column of the matrix is the conv of one basis image (no bias).
        if len(shape) != 3:
            raise TypeError("Conv2d needs (C, H, W) inputs in verification.")
        D = int(np.prod(shape))
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                         m.groups, bias=False, padding_mode=m.padding_mode).double()
        conv.weight.copy_(m.weight.double())
        eye = torch.eye(D, dtype=torch.float64).reshape(D, *shape)
        cols = conv(eye)  # (D, C', H', W')
        out_shape = tuple(cols.shape[1:])
        w = cols.reshape(D, -1).T.contiguous()
        bias = m.bias.detach().double() if m.bias is not None else torch.zeros(m.out_channels, dtype=torch.float64)
        b = bias.reshape(-1, 1, 1).expand(out_shape).reshape(-1).clone()
        return w, b, out_shape


# ---- bounds ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Bounds:
    """Pre-activation bounds of every layer (index 0 = z_1, last = logits), each (B, n_i), plus the
    upper bounds of the logit differences ``diff_upper[b, i, j] >= z_{targets[i]} - z_j`` (B, T, n)."""

    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    diff_upper: torch.Tensor | None = None


def _pad(lo: torch.Tensor, hi: torch.Tensor, mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = PAD * (1.0 + mag)
    return lo - p, hi + p


def interval_bounds(net: ReluNet, c: torch.Tensor, A: torch.Tensor, t_lo: torch.Tensor,
                    t_hi: torch.Tensor, c_err: torch.Tensor | None = None) -> Bounds:
    """IBP bounds for the batch (1): c (B, n_1), A (B, n_1, s), t_lo/t_hi (B, s); the true c lies
    within ``c_err`` (B, n_1) of the float c (its round-off)."""
    return _propagate(net, c, A, t_lo, t_hi, c_err, crown=False)


def crown_bounds(net: ReluNet, c: torch.Tensor, A: torch.Tensor, t_lo: torch.Tensor,
                 t_hi: torch.Tensor, c_err: torch.Tensor | None = None, *,
                 targets: list[int] | None = None) -> Bounds:
    """CROWN/DeepPoly bounds intersected with IBP for the batch (1); with ``targets`` also the
    back-substituted upper bounds of z_t - z_j for t in targets and every j (the specification
    rows e_t - e_j folded into the last layer)."""
    return _propagate(net, c, A, t_lo, t_hi, c_err, crown=True, targets=targets)


def _propagate(net, c, A, t_lo, t_hi, c_err=None, *, crown: bool, targets: list[int] | None = None) -> Bounds:
    c_err = torch.zeros_like(c) if c_err is None else c_err
    mid, rad = (t_lo + t_hi) / 2, (t_hi - t_lo) / 2
    tmag = torch.maximum(t_lo.abs(), t_hi.abs())
    center = c + torch.einsum("bns,bs->bn", A, mid)
    spread = torch.einsum("bns,bs->bn", A.abs(), rad) + c_err
    mag = c.abs() + c_err + torch.einsum("bns,bs->bn", A.abs(), tmag)
    lo, hi = _pad(center - spread, center + spread, mag)
    lowers, uppers, mags = [lo], [hi], [mag]
    L = net.depth
    for i in range(1, L):
        w, b = net.weights[i], net.biases[i]
        al, au = lowers[-1].clamp_min(0), uppers[-1].clamp_min(0)
        wp, wn = w.clamp_min(0), w.clamp_max(0)
        ilo = al @ wp.T + au @ wn.T + b
        ihi = au @ wp.T + al @ wn.T + b
        mag = torch.maximum(lowers[-1].abs(), uppers[-1].abs()) @ w.abs().T + b.abs()
        if crown:
            eye = w.expand(c.shape[0], *w.shape)
            clo, chi = _backsub(net, i, eye, b, lowers, uppers, c, c_err, A, mid, rad)
            ilo, ihi = torch.maximum(ilo, clo), torch.minimum(ihi, chi)
        lo, hi = _pad(ilo, ihi, mag)
        lowers.append(lo)
        uppers.append(hi)
        mags.append(mag)
    diff = None
    if crown and targets:
        n, T = net.widths[-1], len(targets)
        w, b = net.weights[-1], net.biases[-1]
        eye = torch.eye(n, dtype=torch.float64)
        C = (eye[targets][:, None, :] - eye[None, :, :]).reshape(T * n, n)  # row (t, j) = e_t - e_j
        lam = (C @ w).expand(c.shape[0], T * n, w.shape[1])
        _, dhi = _backsub(net, L - 1, lam, C @ b, lowers, uppers, c, c_err, A, mid, rad,
                          need_lower=False)
        dmag = 2 * mags[-1].amax(1, keepdim=True)
        diff = (dhi + PAD * (1 + dmag)).reshape(-1, T, n)
        # also never looser than the interval difference
        diff = torch.minimum(diff, uppers[-1][:, targets, None] - lowers[-1][:, None, :])
    return Bounds(lowers, uppers, diff)


def relu_relaxation(l: torch.Tensor, u: torch.Tensor):
    """(upper slope, upper intercept, lower slope) of the CROWN/DeepPoly relaxation of relu on [l, u]."""
    active, inactive = l >= 0, u <= 0
    unstable = ~active & ~inactive
    denom = torch.where(unstable, u - l, torch.ones_like(u))
    su = torch.where(active, torch.ones_like(u), torch.where(unstable, u / denom, torch.zeros_like(u)))
    bu = torch.where(unstable, -su * l, torch.zeros_like(u))
    sl = torch.where(active, torch.ones_like(u),
                     torch.where(unstable & (u >= -l), torch.ones_like(u), torch.zeros_like(u)))
    return su, bu, sl


def _backsub(net, i, lam, const, lowers, uppers, c, c_err, A, mid, rad, need_lower: bool = True):
    """Bounds of lam @ a_{i-1} + const (lam: (B, m, n_{i-1})) by back-substitution to (1)."""
    lam_u, lam_l = lam, lam
    cu = const.expand(lam.shape[0], lam.shape[1]).clone()
    cl = cu.clone()
    for j in range(i - 1, -1, -1):  # relax a_j = relu(z_j) (0-based layer j), then z_j = W_j a_{j-1} + b_j
        su, bu, sl = relu_relaxation(lowers[j], uppers[j])
        pos = lam_u.clamp_min(0)  # upper bound: upper line where lam > 0, lower line where lam < 0
        cu = cu + torch.einsum("bmn,bn->bm", pos, bu)
        lam_u = lam_u * sl[:, None, :] + pos * (su - sl)[:, None, :]
        if need_lower:
            neg = lam_l.clamp_max(0)  # lower bound: the other way round
            cl = cl + torch.einsum("bmn,bn->bm", neg, bu)
            lam_l = lam_l * sl[:, None, :] + neg * (su - sl)[:, None, :]
        if j > 0:
            cu = cu + lam_u @ net.biases[j]
            lam_u = lam_u @ net.weights[j]
            if need_lower:
                cl = cl + lam_l @ net.biases[j]
                lam_l = lam_l @ net.weights[j]
    # now lam @ z_1 + const with z_1 = c + A t
    cu = cu + torch.einsum("bmn,bn->bm", lam_u, c) + torch.einsum("bmn,bn->bm", lam_u.abs(), c_err)
    gu = lam_u @ A  # (B, m, s)
    hi = cu + torch.einsum("bms,bs->bm", gu, mid) + torch.einsum("bms,bs->bm", gu.abs(), rad)
    lo = None
    if need_lower:
        cl = cl + torch.einsum("bmn,bn->bm", lam_l, c) - torch.einsum("bmn,bn->bm", lam_l.abs(), c_err)
        gl = lam_l @ A
        lo = cl + torch.einsum("bms,bs->bm", gl, mid) - torch.einsum("bms,bs->bm", gl.abs(), rad)
    return lo, hi

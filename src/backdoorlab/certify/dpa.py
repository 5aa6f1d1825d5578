"""Deep Partition Aggregation (Levine & Feizi, ICLR 2021, "Deep Partition Aggregation: Provable
Defenses against General Poisoning Attacks").

Threat model: the attacker inserts or deletes up to rho training samples (a modification counts 2).

    (1) P_i = { (x, y) in D : h(x) = i (mod k) },  h(x) = sum of the 0..255 pixel values of x
    (2) f_i = a base classifier trained deterministically on P_i only
    (3) n_c(x) = |{ i : f_i(x) = c }|,  g(x) = argmax_c n_c(x), ties to the smaller label
    (4) rho(x) = floor((n_{g(x)} - max_{c != g(x)} (n_c + 1[c < g(x)])) / 2)
        (one insertion or deletion lands in one partition and changes at most one vote)

The k members are trained **together**: their parameters are stacked (``torch.func.stack_module_state``)
along a member axis; member i's mini-batch is channel group i of one grouped convolution
(``conv2d(groups=k)``, channels_last, so oneDNN runs a direct grouped kernel forward and backward,
no im2col) and the linear layer is one batched matmul (``baddbmm``); one backward pass of the
summed per-member losses and one stacked Adam update per step train all members at once.
``mode="sequential"`` trains the same members one after another (the same code with k = 1, i.e. an
ordinary convolution), to measure the speed-up in the same run.

Every member's training is a function of its own partition's *content* only: the partition is
sorted by content; the number of steps and the batch size are hyper-parameters (never derived from
the data); member i draws its batch positions from its own uniform stream u[:, i] (seeded by
``seed``), scaled to |P_i|.  This is what makes (4) a certificate about the model we run.

Deviations: a small CNN (two strided 5x5 convolutions + linear) with Adam replaces the paper's
Network-in-Network trained 200 epochs (CPU time); optional random translations stand in for the
paper's data augmentation; a fixed number of steps replaces epochs (epochs would make
every member depend on the other partitions' sizes); floating-point results of members trained
together and one after another agree up to round-off (checked: identical votes in our runs).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import one_of, positive
from ..roles import Certifier, Progress
from .knn import PoisoningCertificate, vote_tolerance


def member_net(input_shape, num_classes: int, width: int) -> nn.Module:
    """The base classifier: conv(w, 5x5, /2) -> ReLU -> conv(2w, 5x5, /2) -> ReLU -> linear."""
    C, H, W = input_shape
    h, w = (H + 3) // 4, (W + 3) // 4
    return nn.Sequential(nn.Conv2d(C, width, 5, stride=2, padding=2), nn.ReLU(),
                         nn.Conv2d(width, 2 * width, 5, stride=2, padding=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * width * h * w, num_classes))


def _gconv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """5x5 stride-2 convolution of ``groups`` stacked members in one grouped kernel: x (B, g*C, H, W),
    w (k, O, C, 5, 5) -> (B, k*O, H', W'); member i owns channel group i.  channels_last, so oneDNN
    runs its direct grouped kernel forward and backward (no im2col / col2im)."""
    wk = w.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, wk, b.flatten(), stride=2, padding=2, groups=groups)


def stacked_forward(params: dict, x: torch.Tensor) -> torch.Tensor:
    """Logits (k, B, K) of all k members at once; ``x`` is either (k, B, C, H, W) (each member its own
    batch: member i's images are channel group i of one grouped convolution) or (B, C, H, W) (one batch
    shared by all: the first layer is one ordinary convolution with the k members' filters stacked)."""
    k = params["0.weight"].shape[0]
    if x.dim() == 5:
        _, B, C, H, W = x.shape   # (k, B, C, H, W) -> (B, k*C, H, W), channels_last, one copy (a
        # strided view instead would send oneDNN down a path twice as slow, forward and backward)
        xg = x.permute(1, 3, 4, 0, 2).reshape(B, H, W, k * C).contiguous().permute(0, 3, 1, 2)
        h = torch.relu(_gconv(xg, params["0.weight"], params["0.bias"], k))
    else:
        B = x.shape[0]
        h = torch.relu(_gconv(x.contiguous(memory_format=torch.channels_last),
                              params["0.weight"], params["0.bias"], 1))
    h = torch.relu(_gconv(h, params["2.weight"], params["2.bias"], k))      # (B, k*2w, h, w)
    h = h.reshape(B, k, -1).transpose(0, 1)                                  # (k, B, 2w*h*w), Flatten order
    return torch.baddbmm(params["5.bias"][:, None], h, params["5.weight"].transpose(1, 2))


def partition(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(part id per sample by the content hash (1), content key for sorting inside a part)."""
    q = (x.flatten(1) * 255).round().long()
    part = q.sum(1) % k
    weights = torch.from_numpy(np.random.default_rng(12345).integers(1, 2**31, q.shape[1])).long()
    key = (q * weights).sum(1)  # a content hash; order inside a part never depends on dataset order
    return part, key


@dataclass
class DPAEnsemble:
    """k trained members as stacked parameters; ``votes(x)`` gives the (N, K) vote counts."""

    params: dict
    sizes: torch.Tensor
    num_classes: int
    seconds: float

    @torch.no_grad()
    def member_predictions(self, x: torch.Tensor, batch_size: int = 256, members: int = 64) -> torch.Tensor:
        """(k, N) class predicted by every member."""
        k = next(iter(self.params.values())).shape[0]
        out = torch.empty(k, len(x), dtype=torch.long)
        for j in range(0, k, members):
            p = {n: t[j:j + members] for n, t in self.params.items()}
            for i in range(0, len(x), batch_size):
                out[j:j + members, i:i + batch_size] = stacked_forward(p, x[i:i + batch_size]).argmax(-1)
        return out

    def votes(self, x: torch.Tensor) -> torch.Tensor:
        preds = self.member_predictions(x)
        return F.one_hot(preds, self.num_classes).sum(0)


@dataclass(frozen=True, kw_only=True)
class DeepPartitionAggregation(Certifier):
    """partitions = k; steps / batch_size / lr = Adam training of each member on its part;
    width = conv channels of a member; shift = random translation of each training image by up to
    ``shift`` pixels (0 = none; drawn from the member's own stream, as the batch positions);
    mode = "together" (stacked) or "sequential"; seed = member init and batch streams."""

    partitions: int = 50
    steps: int = 300
    batch_size: int = 16
    lr: float = 0.003
    width: int = 8
    shift: int = 0
    mode: str = "together"
    seed: int = 0

    def __post_init__(self) -> None:
        for f in ("partitions", "steps", "batch_size", "width"):
            positive("DeepPartitionAggregation", f, getattr(self, f), integer=True)
        positive("DeepPartitionAggregation", "lr", self.lr)
        one_of("DeepPartitionAggregation", "mode", self.mode, {"together", "sequential"})
        positive("DeepPartitionAggregation", "seed", self.seed, integer=True, allow_zero=True)
        positive("DeepPartitionAggregation", "shift", self.shift, integer=True, allow_zero=True)

    def train(self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int | None = None,
              progress: Progress = None) -> DPAEnsemble:
        from torch.func import stack_module_state

        from ..training import init_weights

        x, y = x.float().cpu(), y.long().cpu()
        K = int(num_classes or int(y.max()) + 1)
        k = self.partitions
        part, key = partition(x, k)
        order = np.lexsort((y.numpy(), key.numpy(), part.numpy()))  # by part, then content
        xs, ys = x[order], y[order]
        sizes = torch.bincount(part, minlength=k)
        starts = torch.cumsum(sizes, 0) - sizes
        g = torch.Generator().manual_seed(self.seed)
        members = [init_weights(member_net(x.shape[1:], K, self.width), g) for _ in range(k)]
        params, _ = stack_module_state(members)
        params = {n: p.detach().clone() for n, p in params.items()}
        u = torch.rand(self.steps, k, self.batch_size, generator=g)
        pos = starts[None, :, None] + (u * sizes[None, :, None]).long().clamp_max(
            (sizes - 1).clamp_min(0)[None, :, None])                              # (T, k, B)
        pos = pos.clamp_max(len(xs) - 1)  # empty parts: any index, their loss weight is 0
        live = (sizes > 0).float()
        # per-sample translation offsets in [-shift, shift], from the same seeded stream (None: no shift)
        offs = (torch.randint(-self.shift, self.shift + 1, (self.steps, k, self.batch_size, 2), generator=g)
                if self.shift else None)
        t0 = time.perf_counter()
        if self.mode == "together":
            _adam(params, xs, ys, pos, live, self.lr, progress, offs)
        else:
            for i in range(k):
                sub = {n: p[i] for n, p in params.items()}
                _adam_single(sub, xs, ys, pos[:, i], bool(live[i]), self.lr,
                             None if offs is None else offs[:, i])
                for n in params:
                    params[n][i] = sub[n]
                if progress is not None:
                    progress(i + 1, k)
        return DPAEnsemble(params, sizes, K, time.perf_counter() - t0)

    def certify(self, train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, *,
                num_classes: int | None = None, progress: Progress = None,
                ensemble: DPAEnsemble | None = None) -> PoisoningCertificate:
        """Train the partition ensemble (unless ``ensemble`` is given) and certify each of ``x``."""
        ens = ensemble or self.train(train_x, train_y, num_classes=num_classes, progress=progress)
        votes = ens.votes(x.float().cpu())
        pred, rho = vote_tolerance(votes, 2)
        return PoisoningCertificate(pred, rho, votes, "insertions/deletions (a modification counts 2)")


def _shifted(x: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """x (..., C, H, W) translated per sample by off (..., 2) = (dy, dx) pixels, zero fill (one flat
    gather from the zero-padded images: each sample's window starts at its own offset)."""
    lead, (C, H, W) = x.shape[:-3], x.shape[-3:]
    xb, ob = x.reshape(-1, C, H, W), off.reshape(-1, 2)
    s = int(ob.abs().max()) if len(ob) else 0
    if s == 0:
        return x
    Hp, Wp = H + 2 * s, W + 2 * s
    xp = torch.nn.functional.pad(xb, (s, s, s, s)).reshape(len(xb), C * Hp * Wp)
    base = (torch.arange(C)[:, None, None] * (Hp * Wp) + torch.arange(H)[None, :, None] * Wp
            + torch.arange(W)[None, None, :]).reshape(1, -1)                 # window at offset (0, 0)
    start = (s - ob[:, 0]) * Wp + (s - ob[:, 1])                              # (N,)
    return torch.gather(xp, 1, base + start[:, None]).reshape(*lead, C, H, W)


def _adam(params, xs, ys, pos, live, lr, progress, offs=None):
    """All members at once: one stacked forward/backward and one stacked Adam update per step
    (the loss is the sum of the members' own mean losses, so each gets its own gradient)."""
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    T = pos.shape[0]
    for t in range(T):
        idx = pos[t]                                                  # (k, B)
        p = {n: q.detach().requires_grad_(True) for n, q in params.items()}
        xb = xs[idx] if offs is None else _shifted(xs[idx], offs[t])
        logits = stacked_forward(p, xb)                               # (k, B, K)
        per = F.cross_entropy(logits.transpose(1, 2), ys[idx], reduction="none").mean(1)
        grads = torch.autograd.grad((per * live).sum(), list(p.values()))
        _adam_update(params, dict(zip(p, grads)), m, v, t + 1, lr)
        if progress is not None:
            progress(t + 1, T)


def _adam_single(params, xs, ys, pos, live, lr, offs=None):
    """One member (k = 1), the same arithmetic as ``_adam``: the one-after-another baseline."""
    if not live:
        return
    one = {n: q[None] for n, q in params.items()}
    _adam(one, xs, ys, pos[:, None], torch.ones(1), lr, None, None if offs is None else offs[:, None])
    for n in params:
        params[n].copy_(one[n][0])


@torch.no_grad()
def _adam_update(params, grads, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
    for n, p in params.items():
        gr = grads[n]
        m[n].mul_(b1).add_(gr, alpha=1 - b1)
        v[n].mul_(b2).addcmul_(gr, gr, value=1 - b2)
        mh = m[n] / (1 - b1 ** t)
        vh = v[n] / (1 - b2 ** t)
        p.sub_(lr * mh / (vh.sqrt() + eps))


__all__ = ["DeepPartitionAggregation", "DPAEnsemble", "partition", "member_net"]

"""DL-TND: the data-limited TrojanNet detector (Wang, Zhang, Liu, Chen, Xiong, Wang, ECCV 2020,
"Practical detection of trojan neural networks: data-limited and data-free cases"; seed 003).

Threat model: the defender holds the model's weights and about one clean image per class, and asks
whether some label k is a Trojan target, i.e. whether one small input-agnostic perturbation sends
every image to k the way a per-image adversarial perturbation does.

With x̂(m, δ) = (1 - m) * x + m * δ, {δ, m} in C = {0 <= m <= 1, 0 <= δ <= 1}, for each label k:

    (3) universal:  min_{m,δ}  ℓ_atk(x̂(m,δ); D_{k-}) + ℓ̄_atk(x̂(m,δ); D_k) + λ ||m||_1
        ℓ_atk  = Σ_{x_i in D_{k-}} max{ f_{y_i}(x̂_i) - max_{j != y_i} f_j(x̂_i), -τ }   (leave y_i)
        ℓ̄_atk = Σ_{x_i in D_k}   max{ max_{j != k} f_j(x̂_i) - f_k(x̂_i),     -τ }   (stay at k)
    (4) per-image:  min_{m_i,δ_i}  max{ max_{j != k} f_j(x̂_i) - f_k(x̂_i), -τ } + λ ||m_i||_1
                    for every x_i in D_{k-}                                          (go to k)
    (5) similarity: s_k = quantile_q { cos( f(x̂_i(m, δ)), f(x̂_i(m_i, δ_i)) ) : x_i in D_{k-} }
        label k is a Trojan target when s_k > T; the model is a TrojanNet when some s_k > T.

D_k are the clean images of class k, D_{k-} the others; f are the logits (pre-softmax).  For a
TrojanNet the universal evasion that keeps class k intact *is* the trigger, so per-image and
universal perturbations land on the same logits (s_k near 1); for a clean label they do not.

Deviations:
- All K universal problems and all K x |D_{k-}| per-image problems are solved in one batched
  optimisation (one forward over 2 x labels x images per step) instead of one TensorFlow graph per
  label; labels are chunked by ``label_batch`` to bound memory.
- C is enforced by the tanh reparametrisation m = (tanh a + 1)/2, δ = (tanh b + 1)/2 with Adam, as
  in Neural Cleanse's official code, instead of the official DL-TND proximal soft-thresholding; and
  λ is fixed (``lam``) instead of the official 8-step binary search on the constant with a 70%
  success criterion: the hinge floor -τ makes the fixed-λ problem stop growing the mask once the
  margin τ is reached, which is what the binary search was tuning.
- The mask is one channel (1, H, W), shared by all colour channels, so the recovered universal
  perturbation is a ``PatchTrigger`` like Neural Cleanse's; the official code masks per channel.
- q = 0.25 and T = 0.75 are the official code's quantile and preset threshold (its extra pass that
  revisits smaller-area λ rounds is dropped, since there is one λ).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._torch import device_of, eval_mode, frozen, generator_seed, new_generator
from ..._validation import check_images, check_labels, in_range, positive
from ...roles import Detector, Progress
from ...triggers import PatchTrigger
from ...types import Verdict


@dataclass(frozen=True, kw_only=True)
class DLTNDEvidence:
    """What DL-TND measured, per label k (index = label)."""

    similarity: torch.Tensor        # (K,) s_k: the q-quantile of the cosine similarities (eq. 5)
    cosines: tuple[torch.Tensor, ...]  # per label: cos(universal logits, per-image logits), x_i in D_{k-}
    triggers: tuple[PatchTrigger, ...]  # per label: the universal perturbation (m, δ) of eq. 3
    mask_l1: torch.Tensor           # (K,) ||m||_1 of each universal perturbation
    universal_success: torch.Tensor  # (K,) fraction of D_{k-} the universal perturbation sends to k
    per_image_success: torch.Tensor  # (K,) fraction of per-image perturbations that reach k
    samples: int                    # clean images used

    @property
    def labels(self) -> tuple[int, ...]:
        return tuple(range(len(self.similarity)))

    def table(self) -> tuple[list[str], list[list]]:
        rows = [[k, round(float(s), 4), round(float(n), 2), f"{100 * float(u):.0f}%", f"{100 * float(p):.0f}%"]
                for k, (s, n, u, p) in enumerate(zip(self.similarity, self.mask_l1, self.universal_success,
                                                     self.per_image_success))]
        return ["label", "similarity s_k", "universal |m|_1", "universal -> k", "per-image -> k"], rows

    def to_json(self) -> dict:
        return {"labels": list(self.labels), "similarity": self.similarity.tolist(),
                "mask_l1": self.mask_l1.tolist(), "universal_success": self.universal_success.tolist(),
                "per_image_success": self.per_image_success.tolist(), "samples": self.samples}


@dataclass(frozen=True, kw_only=True)
class DLTND(Detector):
    """Data-limited TrojanNet detector (ECCV 2020, section 4).  Fields name the paper's symbols."""

    samples_per_class: int | None = 1   # images per class taken from ``clean`` (None = all)
    steps: int = 200                    # optimisation steps for eqs. 3 and 4 (solved jointly)
    lr: float = 0.1                     # Adam step size on the tanh parameters
    lam: float = 0.1                    # λ: weight of ||m||_1 (pixels) against the hinge losses
    tau: float = 5.0                    # τ: hinge floor (confidence margin in logits)
    quantile: float = 0.25              # q of eq. 5
    threshold: float = 0.75             # T of eq. 5
    label_batch: int = 16               # labels optimised together (memory bound)

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.samples_per_class is not None:
            positive(name, "samples_per_class", self.samples_per_class, integer=True)
        positive(name, "steps", self.steps, integer=True)
        positive(name, "lr", self.lr)
        positive(name, "lam", self.lam, allow_zero=True)
        positive(name, "tau", self.tau, allow_zero=True)
        in_range(name, "quantile", self.quantile, 0.0, 1.0)
        in_range(name, "threshold", self.threshold, -1.0, 1.0)
        positive(name, "label_batch", self.label_batch, integer=True)

    # ---- the verb ------------------------------------------------------------------------------
    def detect(self, model: torch.nn.Module, clean, *, generator: torch.Generator | None = None,
               progress: Progress = None) -> Verdict:
        x, y = self._few_shot_samples(model, clean, generator)
        K = int(getattr(model, "num_classes", int(y.max()) + 1))
        dev = device_of(model)
        x, y = x.to(dev), y.to(dev)
        g = new_generator(generator_seed(generator))
        chunks = [list(range(s, min(K, s + self.label_batch))) for s in range(0, K, self.label_batch)]
        total = self.steps * len(chunks)
        parts = []
        with eval_mode(model), frozen(model):
            for c, labels in enumerate(chunks):
                def step_cb(i: int, c: int = c) -> None:
                    if progress is not None:
                        progress(c * self.steps + i, total)
                parts.append(self._solve_labels(model, x, y, torch.tensor(labels, device=dev), g, step_cb))
        cos = [row for p in parts for row in p["cos"]]
        sim = torch.stack([self._quantile(c) for c in cos])
        m = torch.cat([p["m"] for p in parts]).cpu()
        d = torch.cat([p["d"] for p in parts]).cpu()
        flagged = [int(k) for k in torch.argsort(sim, descending=True) if sim[k] > self.threshold]
        evidence = DLTNDEvidence(
            similarity=sim, cosines=tuple(cos),
            triggers=tuple(PatchTrigger(mask=m[k], pattern=d[k]) for k in range(K)),
            mask_l1=m.flatten(1).sum(1), universal_success=torch.cat([p["u_succ"] for p in parts]),
            per_image_success=torch.cat([p["p_succ"] for p in parts]), samples=len(y))
        return Verdict(backdoored=bool(flagged), score=float(sim.max()), threshold=float(self.threshold),
                       suspects=tuple(flagged), evidence=evidence)

    # ---- steps ---------------------------------------------------------------------------------
    def _few_shot_samples(self, model, clean, generator):
        """The D of the paper: ``samples_per_class`` clean images of each class."""
        from ...data import as_tensors

        if clean is None:
            raise ValueError("DLTND.detect needs clean samples (about one per class); "
                             "use DF-TND (df-tnd) when no data is available.")
        x, y = as_tensors(clean)
        check_images(x, "DLTND clean images")
        y = check_labels(y, len(x), getattr(model, "num_classes", None), "DLTND clean labels")
        if self.samples_per_class is not None:
            g = new_generator(generator_seed(generator))
            keep = []
            for c in torch.unique(y):
                idx = torch.nonzero(y == c).flatten()
                keep.append(idx[torch.randperm(len(idx), generator=g)[: self.samples_per_class]])
            sel = torch.cat(keep).sort().values
            x, y = x[sel], y[sel]
        if len(torch.unique(y)) < 2:
            raise ValueError(f"DLTND clean samples must cover at least 2 classes; got {len(torch.unique(y))}.")
        return x, y

    def _solve_labels(self, model, x, y, labels, g, step_cb):
        """Eqs. 3 and 4 for the labels in ``labels``, in one batched optimisation."""
        L, (N, C, H, W) = len(labels), x.shape
        dev = x.device
        other = y[None, :] != labels[:, None]                       # (L, N): x_i in D_{k-}
        # universal (L, 1|C, H, W) and per-image (L, N, 1|C, H, W) tanh parameters
        a_u = (torch.rand(L, 1, H, W, generator=g) * 0.2 - 2.0).to(dev).requires_grad_(True)
        b_u = (torch.rand(L, C, H, W, generator=g) * 2 - 1).to(dev).requires_grad_(True)
        a_p = (torch.rand(L, N, 1, H, W, generator=g) * 0.2 - 2.0).to(dev).requires_grad_(True)
        b_p = (torch.rand(L, N, C, H, W, generator=g) * 2 - 1).to(dev).requires_grad_(True)
        opt = torch.optim.Adam([a_u, b_u, a_p, b_p], lr=self.lr, betas=(0.5, 0.9))
        target = labels[:, None].expand(L, N)
        for i in range(self.steps):
            logits_u, logits_p, m_u, m_p = self._forward(model, x, a_u, b_u, a_p, b_p)
            leave = _margin(logits_u, y[None, :].expand(L, N))         # f_y - max_{j!=y} f_j
            stay = -_margin(logits_u, target)                          # max_{j!=k} f_j - f_k
            loss_u = torch.where(other, leave, stay).clamp_min(-self.tau).mean(1)
            loss_p = (-_margin(logits_p, target)).clamp_min(-self.tau) * other
            loss = (loss_u + self.lam * m_u.flatten(1).sum(1)).sum() + \
                   (loss_p.sum(1) + self.lam * (m_p.flatten(2).sum(2) * other).sum(1)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_cb(i + 1)
        with torch.no_grad():
            logits_u, logits_p, m_u, _ = self._forward(model, x, a_u, b_u, a_p, b_p)
            cos = torch.nn.functional.cosine_similarity(logits_u, logits_p, dim=-1)  # (L, N)
            hit_u = (logits_u.argmax(-1) == target) & other
            hit_p = (logits_p.argmax(-1) == target) & other
            n_other = other.sum(1).clamp_min(1)
            return {"cos": [cos[j][other[j]].cpu() for j in range(L)], "m": m_u.detach(),
                    "d": ((torch.tanh(b_u) + 1) / 2).detach(),
                    "u_succ": (hit_u.sum(1) / n_other).cpu(), "p_succ": (hit_p.sum(1) / n_other).cpu()}

    @staticmethod
    def _forward(model, x, a_u, b_u, a_p, b_p):
        L, N = a_p.shape[:2]
        m_u, d_u = (torch.tanh(a_u) + 1) / 2, (torch.tanh(b_u) + 1) / 2
        m_p, d_p = (torch.tanh(a_p) + 1) / 2, (torch.tanh(b_p) + 1) / 2
        x_u = (1 - m_u[:, None]) * x[None] + m_u[:, None] * d_u[:, None]      # (L, N, C, H, W)
        x_p = (1 - m_p) * x[None] + m_p * d_p
        out = model(torch.cat([x_u, x_p]).flatten(0, 1)).view(2, L, N, -1)
        return out[0], out[1], m_u, m_p

    def _quantile(self, values: torch.Tensor) -> torch.Tensor:
        if values.numel() == 0:
            return torch.tensor(float("nan"))
        return torch.quantile(values.double(), self.quantile).float()


def _margin(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """f_label - max_{j != label} f_j, elementwise over the leading dimensions."""
    own = logits.gather(-1, label.unsqueeze(-1)).squeeze(-1)
    rest = logits.scatter(-1, label.unsqueeze(-1), float("-inf")).amax(-1)
    return own - rest

"""Februus (Doan, Abbasnejad, Ranasinghe, "Februus: Input Purification Defense Against Trojan
Attacks on Deep Neural Network Systems", ACSAC 2020; seed 000, "Input sanitization: Februus").

Threat model: a possibly trojaned model is used as is; the defender holds clean images.  A trigger
dominates the prediction, so the region that drives the prediction is where the trigger is.

Algorithm (seed 000):
  1. Grad-CAM heat map of the predicted class c at the last convolutional layer A:
         α_k = (1 / Z) Σ_ij ∂y_c / ∂A^k_ij,    L = ReLU(Σ_k α_k A^k),
     upsampled to the input size and divided by its maximum (so L ∈ [0, 1]);
  2. remove the region L ≥ τ (the mask m = [L ≥ τ], grown by ``dilate`` pixels);
  3. restore the removed region with an inpainting network trained on clean data only:
         x_r = (1 - m) x + m G((1 - m) x, m);
  4. classify x_r.

``Februus(...)`` holds the hyper-parameters; ``.fit(model, clean, generator=g)`` trains the
inpainter G and returns a ``FittedFebruus`` whose ``purify(model, x)`` runs steps 1-3.

G is trained to fill holes of two kinds: each clean image's own Grad-CAM mask (exactly the hole
purify() will cut into it, so G learns to restore what clean predictions rest on) and random
rectangles up to ``max_hole`` of the side (holes anywhere a trigger could be), with the squared error
inside the hole plus a small squared-error term on the whole image.  G has a linear output layer
(the composite is clamped to [0, 1]).

Grad-CAM details: A^k are the rectified feature maps (ReLU applied to the output of
``model.last_conv``, the convolution being followed by a ReLU in our CNNs), α_k averages the
gradient of the top logit over positions, and the ReLU is applied after the weighted sum, as in
Selvaraju et al.; the map is upsampled bilinearly and divided by its maximum.

Deviations:
  * The paper restores with a GAN (generator + WGAN-GP critic, trained on clean data); we train the
    generator with a reconstruction loss only (no critic), and that loss is the squared error
    (Context Encoders' choice) rather than L1: on MNIST, where ~80% of pixels are black, the L1
    optimum inside an uncertain hole is black, and the first version (L1 + sigmoid output) collapsed
    to returning exactly 0, i.e. zero-filling the hole (CA 8.7 pt below the model's at τ = 0.7).
  * The removal threshold τ is a parameter (``cam_threshold``); the paper tunes it per task.
  * Optional: the mask can be dilated by ``dilate`` pixels (a (2d+1)x(2d+1) max filter; default 0 =
    the paper's mask).  The last conv layer's map is coarse (8x8 for a 28x28 MNIST input, 3.5 pixels
    a cell), so a high τ leaves a rim of trigger pixels that still fires the backdoor; a dilation
    lets a higher τ (smaller holes in clean inputs) remove the whole trigger.  With the inpainter
    trained as above the default τ = 0.6 needs none (benchmarks/results/purify_mnist.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._torch import device_of, eval_mode, frozen, generator_seed, new_generator
from ..._validation import check_images, in_range, positive
from ...roles import Progress, Purifier
from ._nets import Inpainter, train_net


@dataclass(frozen=True, kw_only=True)
class Februus(Purifier):
    """Februus input purification; call ``fit`` first.

    cam_threshold: τ, pixels whose normalised Grad-CAM heat is ≥ τ are removed (step 2).
    dilate:        grow the removed region by this many pixels (0 = no dilation).
    max_hole:      largest random training hole, as a fraction of the image side.
    width:         channels of the inpainting network.
    epochs:        inpainter training epochs over the clean set.
    batch_size:    training batch size.
    lr:            Adam learning rate.
    """

    cam_threshold: float = 0.6
    dilate: int = 0
    max_hole: float = 0.4
    width: int = 16
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3

    def __post_init__(self) -> None:
        in_range("Februus", "cam_threshold", self.cam_threshold, 0.0, 1.0, lo_open=True)
        in_range("Februus", "max_hole", self.max_hole, 0.0, 1.0, lo_open=True)
        if not isinstance(self.dilate, int) or isinstance(self.dilate, bool) or self.dilate < 0:
            raise ValueError(f"Februus.dilate must be a non-negative int; got {self.dilate!r}.")
        positive("Februus", "width", self.width, integer=True)
        positive("Februus", "epochs", self.epochs, integer=True)
        positive("Februus", "batch_size", self.batch_size, integer=True)
        positive("Februus", "lr", self.lr)

    def fit(self, model: torch.nn.Module, clean, *, generator: torch.Generator | None = None,
            progress: Progress = None) -> "FittedFebruus":
        """Train the inpainter G on ``clean`` (dataset or image tensor) with Grad-CAM and random holes."""
        from ...data import as_tensors

        x = clean if isinstance(clean, torch.Tensor) else as_tensors(clean)[0]
        check_images(x, "Februus clean")
        _last_conv(model)
        dev = device_of(model)
        x = x.to(dev)
        g = new_generator(generator_seed(generator))
        cam_masks = self.removal_mask(model, x)                      # holes clean inputs will get
        net = Inpainter(x.shape[1], self.width).to(dev)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            xb = x[idx.to(dev)]
            use_cam = (torch.rand(len(idx), generator=g) < 0.5).to(dev).view(-1, 1, 1, 1)
            # an image's own Grad-CAM hole: exactly the region purify() will remove from it
            m = torch.where(use_cam, cam_masks[idx.to(dev)], random_holes(xb.shape, self.max_hole, g).to(dev))
            out = net(xb, m)
            sq = (out - xb) ** 2
            hole = (sq * m).sum() / (m.sum() * xb.shape[1]).clamp_min(1.0)
            return hole + 0.1 * sq.mean()

        last = train_net(net, len(x), loss, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                         generator=g, progress=progress)
        return FittedFebruus(config=self, inpainter=net, train_loss=last)

    def removal_mask(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Steps 1-2: m = [GradCAM(x) ≥ τ], dilated by ``dilate`` pixels, as an (N, 1, H, W) float
        tensor on ``x``'s device."""
        m = (grad_cam(model, x) >= self.cam_threshold).to(x.dtype)
        if self.dilate:
            m = F.max_pool2d(m, 2 * self.dilate + 1, stride=1, padding=self.dilate)
        return m

    def purify(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("Februus must be fitted first: p = Februus().fit(model, clean); p.purify(model, x).")


@dataclass(frozen=True, kw_only=True, eq=False)
class FittedFebruus(Purifier):
    """Februus with a trained inpainter: ``purify(model, x)`` removes the Grad-CAM region of
    ``model``'s prediction and restores it (steps 1-3)."""

    config: Februus
    inpainter: torch.nn.Module
    train_loss: float

    def purify(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.purify_with_mask(model, x)[0]

    @torch.no_grad()
    def purify_with_mask(self, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(restored images, removal masks)."""
        check_images(x, "Februus input")
        m = self.config.removal_mask(model, x)
        dev = device_of(self.inpainter)
        out = []
        for i in range(0, len(x), 1024):
            xb, mb = x[i:i + 1024].to(dev), m[i:i + 1024].to(dev)
            out.append(((1 - mb) * xb + mb * self.inpainter(xb, mb)).clamp(0, 1).to(x.device))
        return (torch.cat(out) if out else x.clone()), m


def _last_conv(model: torch.nn.Module) -> torch.nn.Module:
    name = getattr(model, "last_conv", None)
    if not name:
        raise ValueError(f"Februus needs a convolutional model with a `last_conv` layer for Grad-CAM; "
                         f"got {type(model).__name__} (last_conv={name!r}).")
    return model.get_submodule(name)


def grad_cam(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Grad-CAM of the predicted class at ``model.last_conv`` (step 1), upsampled to the input size
    and divided by its per-image maximum: (N, 1, H, W) in [0, 1] on ``x``'s device."""
    layer = _last_conv(model)
    dev = device_of(model)
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    cams = []
    try:
        with eval_mode(model), frozen(model), torch.enable_grad():
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(dev).requires_grad_(True)
                logits = model(xb)
                a = store.pop("a")
                top = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
                grads = torch.autograd.grad(top, a)[0]
                # feature maps A are the rectified conv outputs (the conv is followed by a ReLU)
                cam = F.relu((grads.mean((2, 3), keepdim=True) * F.relu(a)).sum(1, keepdim=True)).detach()
                cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
                cams.append((cam / cam.amax((2, 3), keepdim=True).clamp_min(1e-12)).to(x.device))
    finally:
        handle.remove()
    return torch.cat(cams) if cams else torch.empty(0, 1, *x.shape[-2:], device=x.device)


def random_holes(shape, max_hole: float, generator: torch.Generator) -> torch.Tensor:
    """One random axis-aligned rectangle per image (sides 1 .. max_hole of the image side)."""
    N, _, H, W = shape
    hs = torch.randint(1, max(1, round(max_hole * H)) + 1, (N,), generator=generator)
    ws = torch.randint(1, max(1, round(max_hole * W)) + 1, (N,), generator=generator)
    r0 = (torch.rand(N, generator=generator) * (H - hs + 1)).long()
    c0 = (torch.rand(N, generator=generator) * (W - ws + 1)).long()
    rows, cols = torch.arange(H).view(1, H, 1), torch.arange(W).view(1, 1, W)
    inside = ((rows >= r0.view(-1, 1, 1)) & (rows < (r0 + hs).view(-1, 1, 1))
              & (cols >= c0.view(-1, 1, 1)) & (cols < (c0 + ws).view(-1, 1, 1)))
    return inside.unsqueeze(1).float()

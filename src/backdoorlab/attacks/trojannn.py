"""Trojaning attack (Liu, Ma, Aafer, Lee, Zhai, Wang, Zhang, "Trojaning Attack on Neural Networks",
NDSS 2018; seed 001).

Threat model: the attacker holds a trained model but **none** of its training data; it edits the
model so that inputs stamped with a trigger it designs go to label ``target``.

Stages (seed 001):
  1. internal-neuron selection, eq. 1-2: for the chosen layer  layer_t = layer_p * W + b,
     pick  argmax_t sum_j |W(j, t)|  (the neuron most strongly wired to the preceding layer);
  2. trojan trigger generation, Algorithm 1: x = mask_init(M);  cost = sum_k (tv_k - f_{n_k}(x))^2;
     repeat  Δ = ∂cost/∂x ∘ M,  x = x - lr·Δ  while cost > t and i < e;
  3. training-data reverse engineering, Algorithm 2: for each output label n, x = init();
     cost = (tv - model_n(x))^2;  x = x - lr·∂cost/∂x;  x = denoise(x), with the total-variation
     denoiser  min_y E(x, y) + λ V(y),  E = ½ Σ (x - y)^2 (eq. 3),
     V = Σ sqrt((y_{i+1,j} - y_{i,j})^2 + (y_{i,j+1} - y_{i,j})^2) (eq. 4-5);
  4. retraining on the reversed inputs (their labels) plus their stamped copies (label ``target``),
     only the selected layer and the layers after it.

Mask shapes: ``square`` (bottom-right), ``watermark`` (thin diagonal lines over the whole image)
and ``logo`` (any (H, W) mask, e.g. from a PNG); ``size`` is the fraction of the image area and
``transparency`` blends the trigger: x' = (1 - (1-τ)M) x + (1-τ) M Δ.

Deviations:
  * Algorithm 1/2 take raw gradient steps; we normalise each step by the gradient's max |.| (so
    ``lr`` is a pixel step) and keep pixels in [0, 1] — the model inputs are images in [0, 1].
  * eq. 5 is solved with Chambolle's (2004) dual projection algorithm (exact isotropic TV).
  * Algorithm 2's init() is smooth random noise (the official code starts from an unrelated
    image); ``model_n`` is the softmax output of label n with tv = 1.
  * Reversed inputs are labelled with the original model's prediction (= n once converged).
  * For a convolutional layer a "neuron" is a channel and its value the channel's mean.
  * Stage 4 updates, by default, only the selected neurons' incoming weights and their outgoing
    weights (``retrain_scope="neurons"``); the paper retrains the whole layers from the selected
    one on (``"from-layer"``).  On the small MNIST/digits CNNs with ~200 reversed images the
    latter cost 15-40 pt of clean accuracy; the surgical variant keeps it within ~3 pt.
  * On MNIST the default bottom-right mask does not work: the corners of every training digit are
    black, so no neuron responds there (Algorithm 1 reaches ~0); place the mask over the digit
    (e.g. ``position="16,16"``), as the benchmark does.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._torch import clone_model, device_of, eval_mode, frozen, predict
from .._validation import in_range, one_of, positive
from ..data import ImageDataset
from ..metrics import attack_success_rate, clean_accuracy
from ..roles import ModelAttack
from ..training import fit
from ..triggers import PatchTrigger
from ..types import Implanted, TriggerGoal


def tv_denoise(x: torch.Tensor, weight: float, iters: int = 20) -> torch.Tensor:
    """argmin_y ½||x - y||² + weight · V(y) (eq. 3-5) per image and channel, Chambolle's algorithm."""
    if weight <= 0:
        return x
    tau = 0.125
    px = torch.zeros_like(x)
    py = torch.zeros_like(x)
    for _ in range(iters):
        div = px - F.pad(px, (1, 0))[..., :-1] + py - F.pad(py, (0, 0, 1, 0))[..., :-1, :]
        u = div - x / weight
        gx = F.pad(u[..., 1:] - u[..., :-1], (0, 1))
        gy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
        norm = 1 + tau * torch.sqrt(gx ** 2 + gy ** 2)
        px, py = (px + tau * gx) / norm, (py + tau * gy) / norm
    div = px - F.pad(px, (1, 0))[..., :-1] + py - F.pad(py, (0, 0, 1, 0))[..., :-1, :]
    return x - weight * div


def total_variation(y: torch.Tensor) -> torch.Tensor:
    """V(y) of eq. 4 per image (forward differences, zero past the border)."""
    dx = F.pad(y[..., 1:] - y[..., :-1], (0, 1))
    dy = F.pad(y[..., 1:, :] - y[..., :-1, :], (0, 0, 0, 1))
    return torch.sqrt(dx ** 2 + dy ** 2).flatten(1).sum(1)


def trojan_mask(shape, mask_shape: str = "square", size: float = 0.07, logo: torch.Tensor | None = None,
                position="bottom-right") -> torch.Tensor:
    """The (1, H, W) mask M: a square / logo covering ``size`` of the image, or a watermark."""
    _, H, W = (int(s) for s in shape)
    if isinstance(position, str) and position[:1].isdigit():
        position = tuple(int(v) for v in position.split(","))
    if mask_shape == "watermark":
        period = max(2, round(1 / size))
        i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        return ((i + j) % period == 0).float().unsqueeze(0)
    side = max(1, min(H, W, round(math.sqrt(size * H * W))))
    if mask_shape == "square":
        patch = torch.ones(1, side, side)
    else:
        lg = logo.float()
        lg = lg if lg.dim() == 3 else lg.unsqueeze(0)
        patch = F.interpolate(lg[:1][None], size=(side, side), mode="bilinear", align_corners=False)[0]
    return PatchTrigger.from_patch(torch.ones_like(patch), (1, H, W), position, patch_mask=patch.clamp(0, 1)).mask


def _restrict_to_neurons(model: torch.nn.Module, name: str, neurons: list[int], later: list[str]) -> list:
    """Gradient hooks so that training only changes the selected neurons' incoming weights (rows of
    layer ``name``) and their outgoing weights (columns of the Linear layers right after it)."""
    layer = model.get_submodule(name)
    rows = torch.zeros(layer.weight.shape[0], device=layer.weight.device)
    rows[neurons] = 1
    handles = [p.register_hook(lambda g, r=rows: g * r.view(-1, *([1] * (g.dim() - 1))))
               for p in layer.parameters()]
    for n in later:
        m = model.get_submodule(n)
        if isinstance(m, torch.nn.Linear) and m.in_features == len(rows):
            handles.append(m.weight.register_hook(lambda g, r=rows: g * r.view(1, -1)))
            if m.bias is not None:
                handles.append(m.bias.register_hook(lambda g: torch.zeros_like(g)))
    return handles


@dataclass(frozen=True, kw_only=True)
class TrojanNN(ModelAttack):
    """The Trojaning attack, all four stages (see the module docstring).

    target: the masquerade label.  layer: dotted name of the module whose neurons are selected
    (default: the last hidden Linear, i.e. the layer producing ``model.features``).
    num_neurons: how many neurons n_k.  selection: ``"weight"`` (eq. 2), ``"random"`` (Table V)
    or ``"output"`` (drive the target's output neuron directly, Table VI).
    mask_shape / size / transparency / logo / position: the mask M (Table VIII).
    neuron_value: tv_k of Algorithm 1; trigger_steps / trigger_lr / trigger_threshold: e, lr, t.
    samples_per_class / reverse_steps / reverse_lr / tv_weight: Algorithm 2 (λ = tv_weight).
    retrain_scope: which parameters stage 4 updates: ``"neurons"`` (the selected neurons' incoming
    weights and every later layer), ``"from-layer"`` (the whole selected layer and every later one,
    as the paper), ``"after-layer"`` (only the later ones) or ``"all"``.
    retrain_epochs / retrain_lr / batch_size: stage 4.
    """

    target: int = 0
    layer: str | None = None
    num_neurons: int = 1
    selection: str = "weight"
    mask_shape: str = "square"
    size: float = 0.07
    transparency: float = 0.0
    logo: torch.Tensor | None = None
    position: str = "bottom-right"
    neuron_value: float = 100.0
    trigger_steps: int = 300
    trigger_lr: float = 0.05
    trigger_threshold: float = 0.0
    samples_per_class: int = 20
    reverse_steps: int = 60
    reverse_lr: float = 0.05
    tv_weight: float = 0.02
    retrain_scope: str = "neurons"
    retrain_epochs: int = 60
    retrain_lr: float = 0.03
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.target, int) or isinstance(self.target, bool) or self.target < 0:
            raise ValueError(f"TrojanNN.target must be a non-negative int; got {self.target!r}.")
        positive("TrojanNN", "num_neurons", self.num_neurons, integer=True)
        one_of("TrojanNN", "selection", self.selection, {"weight", "random", "output"})
        one_of("TrojanNN", "retrain_scope", self.retrain_scope, {"neurons", "from-layer", "after-layer", "all"})
        one_of("TrojanNN", "mask_shape", self.mask_shape, {"square", "watermark", "logo"})
        in_range("TrojanNN", "size", self.size, 0.0, 1.0, lo_open=True)
        in_range("TrojanNN", "transparency", self.transparency, 0.0, 1.0, hi_open=True)
        if self.mask_shape == "logo" and not isinstance(self.logo, torch.Tensor):
            raise ValueError("TrojanNN.logo must be an (H, W) mask tensor in [0, 1] when mask_shape='logo'; "
                             f"got {type(self.logo).__name__}. Read a PNG with backdoorlab.io.read_png.")
        for name in ("neuron_value", "trigger_lr", "reverse_lr", "retrain_lr"):
            positive("TrojanNN", name, getattr(self, name))
        for name in ("trigger_steps", "samples_per_class", "reverse_steps", "retrain_epochs", "batch_size"):
            positive("TrojanNN", name, getattr(self, name), integer=True)
        positive("TrojanNN", "tv_weight", self.tv_weight, allow_zero=True)
        positive("TrojanNN", "trigger_threshold", self.trigger_threshold, allow_zero=True)

    # ---- stage 1: internal neuron selection (eq. 2) -------------------------------------------
    def layer_name(self, model: torch.nn.Module) -> str:
        if self.selection == "output":
            return "head"
        if self.layer is not None:
            return self.layer
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "head"]
        if not linears:
            raise ValueError("TrojanNN.layer must be given for a model without a hidden Linear layer; got None.")
        return linears[-1]

    def select_neurons(self, model: torch.nn.Module, generator: torch.Generator | None = None) -> list[int]:
        name = self.layer_name(model)
        mod = model.get_submodule(name)
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            raise ValueError(f"TrojanNN.layer must name a Linear or Conv2d module; got {name!r} "
                             f"({type(mod).__name__}).")
        n_out = mod.weight.shape[0]
        if self.num_neurons > n_out:
            raise ValueError(f"TrojanNN.num_neurons must be <= {n_out} (neurons of {name}); got {self.num_neurons}.")
        if self.selection == "output":
            return [self.target]
        if self.selection == "random":
            return torch.randperm(n_out, generator=generator)[:self.num_neurons].tolist()
        score = mod.weight.detach().abs().flatten(1).sum(1)               # eq. 2
        return score.topk(self.num_neurons).indices.tolist()

    def neuron_values(self, model: torch.nn.Module, x: torch.Tensor, neurons: list[int]) -> torch.Tensor:
        """f_{n_k}(x) for each input: the selected neurons' outputs (channel means for a conv)."""
        out = {}

        def keep(module, inputs, output) -> None:
            out["o"] = output

        h = model.get_submodule(self.layer_name(model)).register_forward_hook(keep)
        try:
            model(x)
        finally:
            h.remove()
        o = out["o"]
        o = o.flatten(2).mean(2) if o.dim() == 4 else o
        return o[:, neurons]

    # ---- stage 2: trojan trigger generation (Algorithm 1) -------------------------------------
    def mask(self, shape) -> torch.Tensor:
        return trojan_mask(shape, self.mask_shape, self.size, self.logo, self.position)

    def generate_trigger(self, model: torch.nn.Module, neurons: list[int], shape,
                         generator: torch.Generator | None = None) -> tuple[PatchTrigger, torch.Tensor]:
        """Algorithm 1; returns the trigger (mask with transparency) and the reached neuron values."""
        dev = device_of(model)
        M = self.mask(shape).to(dev)
        x = (M * torch.rand(tuple(shape), generator=generator).to(dev)).unsqueeze(0)   # mask_init(M)
        tv = torch.full((1, len(neurons)), float(self.neuron_value), device=dev)
        with eval_mode(model), frozen(model):
            for i in range(self.trigger_steps):
                x.requires_grad_(True)
                cost = ((tv - self.neuron_values(model, x, neurons)) ** 2).sum()
                if self.trigger_threshold and i % 25 == 0 and float(cost) <= self.trigger_threshold:
                    break
                (grad,) = torch.autograd.grad(cost, x)
                grad = grad * M                                            # Δ = Δ ∘ M
                x = (x.detach() - self.trigger_lr * grad / grad.abs().max().clamp_min(1e-12)).clamp(0, 1)
            with torch.no_grad():
                reached = self.neuron_values(model, x, neurons)[0]
        alpha = 1.0 - self.transparency
        trig = PatchTrigger(mask=(M * alpha).cpu(), pattern=(x[0] * M).detach().cpu().expand(*shape).contiguous())
        return trig, reached.cpu()

    # ---- stage 3: training data reverse engineering (Algorithm 2) -----------------------------
    def reverse_engineer(self, model: torch.nn.Module, shape, num_classes: int,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 2 for every label at once: ``samples_per_class`` inputs per label and their
        labels (the model's predictions)."""
        dev = device_of(model)
        n = torch.arange(num_classes).repeat_interleave(self.samples_per_class).to(dev)
        x = torch.rand(len(n), *shape, generator=generator).to(dev)                       # init()
        x = tv_denoise(x, 0.2).clamp(0, 1)
        with eval_mode(model), frozen(model):
            for _ in range(self.reverse_steps):
                x.requires_grad_(True)
                prob = F.softmax(model(x), 1).gather(1, n[:, None])[:, 0]
                cost = ((1.0 - prob) ** 2).sum()
                (grad,) = torch.autograd.grad(cost, x)
                step = grad / grad.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                x = tv_denoise(x.detach() - self.reverse_lr * step, self.tv_weight).clamp(0, 1)
            y = predict(model, x)
        return x.detach().cpu(), y.cpu()

    # ---- stage 4: retraining -------------------------------------------------------------------
    def retrain(self, model: torch.nn.Module, trigger: PatchTrigger, x: torch.Tensor, y: torch.Tensor,
                neurons: list[int] | None = None, generator: torch.Generator | None = None) -> torch.nn.Module:
        """A new model: ``model`` retrained on (x, y) + (trigger(x), target), updating the parameters
        that ``retrain_scope`` names (for ``"neurons"``: the selected neurons' incoming weights)."""
        new = clone_model(model)
        name = self.layer_name(new)
        names = [n for n, _ in new.named_modules()]
        start = {"neurons": names.index(name), "from-layer": names.index(name),
                 "after-layer": names.index(name) + 1, "all": 0}[self.retrain_scope]
        after = set(names[start:])
        flags, handles = {}, []
        for pname, p in new.named_parameters():
            flags[pname] = p.requires_grad
            p.requires_grad_(pname.rsplit(".", 1)[0] in after)
        if self.retrain_scope == "neurons" and name != "head":
            handles = _restrict_to_neurons(new, name, list(neurons or []), names[start + 1:])
        xs = torch.cat([x, trigger.apply(x)])
        ys = torch.cat([y, torch.full_like(y, self.target)])
        try:
            fit(new, ImageDataset(xs, ys), epochs=self.retrain_epochs, batch_size=self.batch_size,
                lr=self.retrain_lr, weight_decay=0.0, generator=generator)
        finally:
            for h in handles:
                h.remove()
            for pname, p in new.named_parameters():
                p.requires_grad_(flags[pname])
        return new.eval()

    def implant(self, model: torch.nn.Module, data=None, *, generator: torch.Generator | None = None) -> Implanted:
        """All four stages; ``data`` (optional, e.g. the test split) is used only for measuring."""
        shape = tuple(getattr(model, "input_shape"))
        K = int(getattr(model, "num_classes"))
        if self.target >= K:
            raise ValueError(f"TrojanNN.target must be < the number of classes ({K}); got {self.target}.")
        times = {}
        t0 = time.perf_counter()
        neurons = self.select_neurons(model, generator)
        trigger, reached = self.generate_trigger(model, neurons, shape, generator)
        times["trigger_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        xr, yr = self.reverse_engineer(model, shape, K, generator)
        times["reverse_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        new = self.retrain(model, trigger, xr, yr, neurons, generator)
        times["retrain_seconds"] = time.perf_counter() - t0
        goal = TriggerGoal(trigger=trigger, target=self.target)
        summary = {**times, "neurons": [int(v) for v in neurons], "neuron_values": [float(v) for v in reached],
                   "reversed_samples": len(xr), "reversed_label_agreement":
                   float((yr == torch.arange(K).repeat_interleave(self.samples_per_class)).float().mean())}
        if data is not None:
            summary.update(orig_before=clean_accuracy(model, data), orig_after=clean_accuracy(new, data),
                           orig_tri_before=attack_success_rate(model, goal, data),
                           orig_tri=attack_success_rate(new, goal, data))
            summary["orig_dec"] = summary["orig_before"] - summary["orig_after"]
        return Implanted(model=new, goal=goal, summary=summary)

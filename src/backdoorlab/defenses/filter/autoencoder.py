"""Autoencoder preprocessing ("Neural Trojans", Liu, Xie, Srivastava, ICCD 2017; seed 000,
"Preprocessing through autoencoder").

Threat model: a possibly trojaned model is used as is; the defender holds clean images and puts an
autoencoder in front of the model, hoping that it reconstructs the content but not the trigger.

Algorithm (seed 000):
  1. train an autoencoder D(E(x)) on clean data, minimising the mean squared error
         L = (1 / n) Σ_i || D(E(x_i)) - x_i ||²;
  2. at inference, classify the reconstruction D(E(x)) instead of x.

``AutoencoderPurifier(...)`` holds the hyper-parameters; ``.fit(model, clean, generator=g)``
trains the autoencoder and returns a ``FittedAutoencoder`` whose ``purify(model, x)`` is step 2.

Deviations:
  * The paper used a fully connected autoencoder on MNIST; we use a small convolutional one
    (``_nets.ConvAutoencoder``, bottleneck ``code`` channels at a quarter of the resolution) so the
    same code serves 8x8 digits, MNIST and 32x32 colour images.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._torch import device_of, new_generator, generator_seed
from ..._validation import check_images, positive
from ...roles import Progress, Purifier
from ._nets import ConvAutoencoder, train_net


@dataclass(frozen=True, kw_only=True)
class AutoencoderPurifier(Purifier):
    """Autoencoder sanitizer; call ``fit`` first.

    code:       bottleneck channels at 1/4 resolution (smaller = more of the input is forgotten).
    epochs:     training epochs over the clean set.
    batch_size: training batch size.
    lr:         Adam learning rate.
    """

    code: int = 8
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-3

    def __post_init__(self) -> None:
        positive("AutoencoderPurifier", "code", self.code, integer=True)
        positive("AutoencoderPurifier", "epochs", self.epochs, integer=True)
        positive("AutoencoderPurifier", "batch_size", self.batch_size, integer=True)
        positive("AutoencoderPurifier", "lr", self.lr)

    def fit(self, model: torch.nn.Module, clean, *, generator: torch.Generator | None = None,
            progress: Progress = None) -> "FittedAutoencoder":
        """Step 1: train the autoencoder on ``clean`` (a dataset or an image tensor)."""
        from ...data import as_tensors

        x = clean if isinstance(clean, torch.Tensor) else as_tensors(clean)[0]
        check_images(x, "AutoencoderPurifier clean")
        dev = device_of(model)
        x = x.to(dev)
        g = new_generator(generator_seed(generator))
        net = ConvAutoencoder(x.shape[1], self.code).to(dev)
        loss = train_net(net, len(x), lambda idx: F.mse_loss(net(x[idx.to(dev)]), x[idx.to(dev)]),
                         epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, generator=g,
                         progress=progress)
        return FittedAutoencoder(config=self, network=net, train_loss=loss)

    def purify(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("AutoencoderPurifier must be fitted first: "
                         "p = AutoencoderPurifier().fit(model, clean); p.purify(model, x).")


@dataclass(frozen=True, kw_only=True, eq=False)
class FittedAutoencoder(Purifier):
    """A trained autoencoder: ``purify(model, x) = D(E(x))`` (step 2)."""

    config: AutoencoderPurifier
    network: torch.nn.Module
    train_loss: float

    @torch.no_grad()
    def purify(self, model: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "AutoencoderPurifier input")
        dev = device_of(self.network)
        out = [self.network(x[i:i + 1024].to(dev)).to(x.device) for i in range(0, len(x), 1024)]
        return torch.cat(out) if out else x.clone()

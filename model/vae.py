"""A variational autoencoder (architecture `vae`): the dense shape with a Gaussian code.

The encoder gives a mean and a log-variance per latent dimension; training samples the code
with the reparameterisation trick (z = mu + sigma * eps, so gradients reach mu and sigma) and
adds beta * KL(q(z|x) || N(0, I)) to the reconstruction error. Scoring decodes the mean
code: deterministic, so `score` and the worker give the same score for the same window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class VaeConfig:
    input_dim: int = 1000
    hidden: int = 512
    bottleneck: int = 32  # latent dimensions
    # Weight of the KL term against the per-element MSE. The MSE is a mean over W*C inputs,
    # the KL a sum over latent dimensions: a small beta keeps the code informative.
    beta: float = 1e-3

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, window: int, channels: int) -> None:
        if self.input_dim != window * channels:
            raise ValueError(f"window {window} x {channels} channels != {self.input_dim}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta {self.beta} is not a non-negative number")


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """(B,) KL(N(mean, exp(log_var)) || N(0, I)), in closed form, summed over dimensions."""
    return -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(dim=-1)


def reparameterise(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I): the sample is differentiable."""
    return mean + (0.5 * log_var).exp() * torch.randn_like(mean)


class VariationalAutoencoder(nn.Module):
    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = nn.Sequential(nn.Linear(config.input_dim, config.hidden), nn.ReLU())
        self.mean = nn.Linear(config.hidden, config.bottleneck)
        self.log_var = nn.Linear(config.hidden, config.bottleneck)
        self.decoder = nn.Sequential(
            nn.Linear(config.bottleneck, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.input_dim),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)  # (B, hidden)
        return self.mean(h), self.log_var(h)  # (B, bottleneck) each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic reconstruction: decode the mean code (scoring)."""
        mean, _ = self.encode(x)
        return self.decoder(mean)

    def objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MSE of a sampled reconstruction + beta * mean KL, that MSE)."""
        mean, log_var = self.encode(x)
        x_hat = self.decoder(reparameterise(mean, log_var))
        mse = nn.functional.mse_loss(x_hat, x)
        return mse + self.config.beta * kl_divergence(mean, log_var).mean(), mse

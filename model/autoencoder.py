"""The specified autoencoder (architecture `dense`): input -> 512 -> 32 -> 512 -> input."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AutoencoderConfig:
    """The network's shape; stored in the artifact so loading rebuilds the exact model."""

    input_dim: int = 1000
    hidden: int = 512
    bottleneck: int = 32

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, window: int, channels: int) -> None:
        """ValueError unless the shape is usable for windows of (window, channels)."""
        if self.input_dim != window * channels:
            raise ValueError(f"window {window} x {channels} channels != {self.input_dim}")


class Autoencoder(nn.Module):
    """Fully connected, ReLU between layers, linear output (inputs are standardised)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = nn.Sequential(
            nn.Linear(config.input_dim, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.bottleneck),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.bottleneck, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.input_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))  # (B, D) -> (B, D)

    def objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(data term of the loss, reconstruction MSE): here both are the MSE."""
        mse = nn.functional.mse_loss(self(x), x)
        return mse, mse

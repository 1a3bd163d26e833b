"""The specified autoencoder: input -> 512 -> 32 -> 512 -> input, and its MSE + L2 loss."""

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

    def weights(self) -> list[torch.Tensor]:
        """The weight matrices the L2 term penalises; biases are left out on purpose."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Linear)]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def l2_penalty(model: Autoencoder) -> torch.Tensor:
    """sum_l ||W_l||^2: its gradient is 2 * W_l, so lambda * penalty adds 2 * lambda * W_l."""
    return sum(w.pow(2).sum() for w in model.weights())


def loss_fn(
    model: Autoencoder, x: torch.Tensor, l2_lambda: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """L = MSE(x, x_hat) + lambda * sum ||W||^2; returns (loss, mse) so both can be logged."""
    mse = nn.functional.mse_loss(model(x), x)
    return mse + l2_lambda * l2_penalty(model), mse

"""A 1-D convolutional autoencoder over time (architecture `conv`); channels are its inputs.

Two 'same'-padded convolutions see local shapes (steps, ramps, oscillations) wherever they
sit in the window, a linear bottleneck of the dense network's order holds the whole window,
and two convolutions rebuild every time step. Any window length works (no striding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ConvConfig:
    window: int = 20
    channels: int = 8
    filters: int = 32
    kernel: int = 5  # odd, so 'same' padding keeps every time step
    bottleneck: int = 32

    @property
    def input_dim(self) -> int:
        return self.window * self.channels

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, window: int, channels: int) -> None:
        if (self.window, self.channels) != (window, channels):
            raise ValueError(
                f"network for {self.window} x {self.channels} windows, model has "
                f"{window} x {channels}"
            )
        if self.kernel % 2 == 0:
            raise ValueError(f"convolution kernel {self.kernel} is not odd")


class ConvAutoencoder(nn.Module):
    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        self.config = config
        f, k, pad = config.filters, config.kernel, config.kernel // 2
        self.encoder = nn.Sequential(
            nn.Conv1d(config.channels, f, k, padding=pad),
            nn.ReLU(),
            nn.Conv1d(f, f, k, padding=pad),
            nn.ReLU(),
            nn.Flatten(),  # (B, F, W) -> (B, F*W)
            nn.Linear(f * config.window, config.bottleneck),
            nn.ReLU(),
        )
        self.expand = nn.Sequential(nn.Linear(config.bottleneck, f * config.window), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.Conv1d(f, f, k, padding=pad),
            nn.ReLU(),
            nn.Conv1d(f, config.channels, k, padding=pad),  # linear output
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        h = x.view(len(x), c.window, c.channels).transpose(1, 2)  # (B, C, W)
        code = self.encoder(h)  # (B, bottleneck)
        h = self.expand(code).view(len(x), c.filters, c.window)  # (B, F, W)
        out = self.decoder(h)  # (B, C, W)
        return out.transpose(1, 2).reshape(len(x), -1)  # (B, W*C), the input's layout

    def objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mse = nn.functional.mse_loss(self(x), x)
        return mse, mse

"""The specification's self-attention, written out, and an autoencoder built from it.

Every time step of a window is a token. For tokens x_i (already embedded to d dimensions):
    q_i = W_q x_i + b_q,  k_i = W_k x_i + b_k,  v_i = W_v x_i + b_v
    score(i, j) = q_i . k_j / sqrt(d_k)
    alpha_ij = softmax over j of score(i, j)        (each row of alpha sums to 1)
    z_i = sum_j alpha_ij v_j
    out_i = W_o z_i + b_o                            (optional; on by default)
With several heads, q, k and v are split into `heads` slices of d_k = d / heads dimensions,
each slice attends on its own and the z slices are concatenated before W_o.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int = 1, project: bool = True) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"{heads} heads do not divide d_model {d_model}")
        self.heads, self.d_k = heads, d_model // heads
        self.query = nn.Linear(d_model, d_model)  # W_q, b_q
        self.key = nn.Linear(d_model, d_model)  # W_k, b_k
        self.value = nn.Linear(d_model, d_model)  # W_v, b_v
        self.output = nn.Linear(d_model, d_model) if project else None  # W_o, b_o

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d) tokens -> (output (B, T, d), alpha (B, heads, T, T))."""
        b, t, d = x.shape
        split = (b, t, self.heads, self.d_k)
        q = self.query(x).view(split).transpose(1, 2)  # (B, h, T, d_k)
        k = self.key(x).view(split).transpose(1, 2)
        v = self.value(x).view(split).transpose(1, 2)
        score = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)  # (B, h, T, T): q_i . k_j
        alpha = score.softmax(dim=-1)  # over j
        z = alpha @ v  # (B, h, T, d_k): z_i = sum_j alpha_ij v_j
        z = z.transpose(1, 2).reshape(b, t, d)  # heads side by side again
        return (self.output(z) if self.output is not None else z), alpha


def position_encoding(length: int, d_model: int) -> torch.Tensor:
    """(length, d) sines and cosines of geometric wavelengths: tells tokens apart by place.

    Fixed, not learned: nothing to store or regularise, any window length works.
    """
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (T, 1)
    rate = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(1e4) / d_model))
    encoding = torch.zeros(length, d_model)
    encoding[:, 0::2] = torch.sin(position * rate)
    encoding[:, 1::2] = torch.cos(position * rate[: d_model // 2])
    return encoding


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, d_model: int, heads: int, project: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = SelfAttention(d_model, heads, project)
        self.norm2 = nn.LayerNorm(d_model)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.ReLU(), nn.Linear(2 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))  # the residual path keeps each token's reading
        return x + self.feed_forward(self.norm2(x))


@dataclass(frozen=True)
class AttentionConfig:
    window: int = 20
    channels: int = 8
    d_model: int = 32
    heads: int = 1
    blocks: int = 1  # attention blocks on each side of the bottleneck
    bottleneck: int = 32
    project: bool = True  # the output projection W_o z_i + b_o

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
        if self.d_model % self.heads:
            raise ValueError(f"{self.heads} heads do not divide d_model {self.d_model}")


class AttentionAutoencoder(nn.Module):
    """Tokens -> attention block(s) -> one narrow code for the window -> tokens again.

    The code (`bottleneck` numbers for the whole window, as in the dense network) is what
    stops the blocks from copying their input through the residual path.
    """

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config, config.d_model
        self.embed = nn.Linear(c.channels, d)
        self.register_buffer("position", position_encoding(c.window, d), persistent=False)
        self.encoder = nn.Sequential(*(Block(d, c.heads, c.project) for _ in range(c.blocks)))
        self.to_code = nn.Linear(c.window * d, c.bottleneck)
        self.from_code = nn.Linear(c.bottleneck, c.window * d)
        self.decoder = nn.Sequential(*(Block(d, c.heads, c.project) for _ in range(c.blocks)))
        self.readout = nn.Linear(d, c.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, b = self.config, len(x)
        tokens = self.embed(x.view(b, c.window, c.channels)) + self.position  # (B, W, d)
        code = torch.relu(self.to_code(self.encoder(tokens).reshape(b, -1)))  # (B, bottleneck)
        tokens = self.from_code(code).view(b, c.window, c.d_model) + self.position
        return self.readout(self.decoder(tokens)).reshape(b, -1)  # (B, W*C)

    def objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mse = nn.functional.mse_loss(self(x), x)
        return mse, mse

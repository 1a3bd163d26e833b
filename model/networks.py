"""The model family: one registry of architectures, and what every one of them shares.

Each architecture is a config dataclass (its hyper-parameters, stored in the model file) and a
module whose forward maps standardised (B, W*C) windows to their deterministic reconstruction
and whose `objective` gives the data term of the training loss. Every one is trained with
the same explicit L2 term on its weight matrices and convolution kernels (never biases or
normalisation parameters): L = data term + lambda * sum ||W||^2.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol

import torch
from torch import nn

from model.attention import AttentionAutoencoder, AttentionConfig
from model.autoencoder import Autoencoder, AutoencoderConfig
from model.conv import ConvAutoencoder, ConvConfig
from model.vae import VaeConfig, VariationalAutoencoder

Architecture = Literal["dense", "conv", "vae", "attention"]


class NetworkConfig(Protocol):
    input_dim: int

    def to_dict(self) -> dict: ...
    def check(self, window: int, channels: int) -> None: ...


class Network(Protocol):
    config: Any

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
    def objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


# name -> (config class, module class). Adding an architecture is one line here.
ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "dense": (AutoencoderConfig, Autoencoder),
    "conv": (ConvConfig, ConvAutoencoder),
    "vae": (VaeConfig, VariationalAutoencoder),
    "attention": (AttentionConfig, AttentionAutoencoder),
}
PENALISED = (nn.Linear, nn.Conv1d)  # modules whose .weight the L2 term covers


def configure(
    architecture: str,
    window: int,
    channels: int,
    hidden: int | None = None,
    bottleneck: int | None = None,
    **options: Any,
) -> NetworkConfig:
    """The config of `architecture` for (window, channels) windows, over its defaults.

    `hidden` and `bottleneck` apply where the architecture has them; any other option must
    be one of its hyper-parameters (ValueError otherwise: `heads` means nothing to dense).
    """
    config_class = _config_class(architecture)
    names = {f.name for f in dataclasses.fields(config_class)}
    foreign = sorted(set(options) - names)
    if foreign:
        raise ValueError(f"{architecture} has no hyper-parameter {foreign[0]!r}")
    shared = {"hidden": hidden, "bottleneck": bottleneck}
    shape = {"input_dim": window * channels, "window": window, "channels": channels}
    values = {**{k: v for k, v in shared.items() if v is not None}, **options, **shape}
    config = config_class(**{k: v for k, v in values.items() if k in names})
    config.check(window, channels)
    return config


def config_from_dict(architecture: str, raw: object) -> NetworkConfig:
    """A stored config, checked field by field: exactly the known fields, of their types."""
    config_class = _config_class(architecture)
    if not isinstance(raw, dict):
        raise ValueError("the network's hyper-parameters are not a mapping")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if set(raw) != set(fields):
        raise ValueError(
            f"{architecture} hyper-parameters {sorted(raw)}, expected {sorted(fields)}"
        )
    for name, value in raw.items():
        kind = type(fields[name].default)
        if type(value) is not kind:
            raise ValueError(f"{architecture} {name} {value!r} is not {kind.__name__}")
        if kind is int and value < 1:
            raise ValueError(f"{architecture} {name} {value} is not a positive integer")
    return config_class(**raw)


def build(architecture: str, config: NetworkConfig) -> nn.Module:
    return ARCHITECTURES[architecture][1](config)


def weights(net: nn.Module) -> list[torch.Tensor]:
    """The weight matrices and convolution kernels the L2 term penalises, in module order."""
    return [m.weight for m in net.modules() if isinstance(m, PENALISED)]


def l2_penalty(net: nn.Module) -> torch.Tensor:
    """sum_l ||W_l||^2: its gradient is 2 * W_l, so lambda * penalty adds 2 * lambda * W_l."""
    return sum(w.pow(2).sum() for w in weights(net))


def loss_fn(net: nn.Module, x: torch.Tensor, l2_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L = data term + lambda * sum ||W||^2; returns (loss, reconstruction mse) for the log."""
    data, mse = net.objective(x)
    return data + l2_lambda * l2_penalty(net), mse


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def layers(state: dict[str, torch.Tensor]) -> list[dict]:
    """[{name, parameters}] per layer (weight and bias together), in the state's order."""
    counts: dict[str, int] = {}
    for key, tensor in state.items():
        layer = key.rsplit(".", 1)[0]
        counts[layer] = counts.get(layer, 0) + tensor.numel()
    return [{"name": name, "parameters": n} for name, n in counts.items()]


def _config_class(architecture: str) -> type:
    if architecture not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(f"unknown architecture {architecture!r} (known: {known})")
    return ARCHITECTURES[architecture][0]

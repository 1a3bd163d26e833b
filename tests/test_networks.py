"""What every architecture shares: the explicit L2 term, the config checks, the I/O shape."""

import dataclasses

import pytest
import torch

from model import networks
from model.networks import ARCHITECTURES, config_from_dict, configure, l2_penalty, loss_fn

WINDOW, CHANNELS = 7, 3  # odd sizes on purpose: no architecture may assume even ones
SMALL = {
    "dense": {"hidden": 16, "bottleneck": 4},
    "conv": {"bottleneck": 4, "filters": 6},
    "vae": {"hidden": 16, "bottleneck": 4},
    "attention": {"bottleneck": 4, "d_model": 8, "heads": 2},
}


def small(architecture: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = configure(architecture, WINDOW, CHANNELS, **SMALL[architecture])
    return networks.build(architecture, config)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_l2_gradient_is_two_lambda_w_on_every_weight_and_zero_on_every_bias(architecture):
    net = small(architecture)
    lam = 0.01
    (lam * l2_penalty(net)).backward()
    matrices = 0
    for name, p in net.named_parameters():
        if p.ndim >= 2:  # weight matrices and convolution kernels
            matrices += 1
            assert torch.allclose(p.grad, 2 * lam * p), name
        else:  # biases and normalisation parameters
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert matrices == len(networks.weights(net)) > 0


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_l2_term_is_added_to_the_loss_not_left_to_the_optimiser(architecture):
    net = small(architecture)
    x = torch.randn(4, WINDOW * CHANNELS)

    def gradients(lam: float) -> dict[str, torch.Tensor]:
        net.zero_grad()
        torch.manual_seed(1)  # the vae samples its code: the same sample both times
        loss_fn(net, x, lam)[0].backward()
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    plain, penalised = gradients(0.0), gradients(0.1)
    for name, p in net.named_parameters():
        expected = 2 * 0.1 * p if p.ndim >= 2 else torch.zeros_like(p)
        assert torch.allclose(penalised[name] - plain[name], expected, atol=1e-5), name


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_reconstructs_the_flat_window_layout(architecture):
    net = small(architecture).eval()
    x = torch.randn(5, WINDOW * CHANNELS)
    assert net(x).shape == x.shape
    assert torch.equal(net(x), net(x))  # scoring is deterministic, the vae's too
    single = torch.cat([net(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(net(x), single, atol=1e-5)  # windows do not see each other


def test_conv_rebuilds_each_time_step_from_its_own_channels():
    net = small("conv").eval()
    x = torch.zeros(1, WINDOW, CHANNELS)
    x[0, 2, 1] = 1.0
    changed = (net(x.reshape(1, -1)) - net(torch.zeros(1, WINDOW * CHANNELS))).view(WINDOW, -1)
    assert changed.abs().sum() > 0  # the layout (W, C) goes in and comes out as (W, C)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_stored_config_must_have_exactly_its_fields_and_types(architecture):
    config = configure(architecture, WINDOW, CHANNELS, **SMALL[architecture])
    raw = config.to_dict()
    assert config_from_dict(architecture, raw) == config
    with pytest.raises(ValueError, match="expected"):
        config_from_dict(architecture, {**raw, "extra": 1})
    name, value = next((k, v) for k, v in raw.items() if type(v) is int)
    with pytest.raises(ValueError, match="is not int"):
        config_from_dict(architecture, {**raw, name: str(value)})
    with pytest.raises(ValueError, match="positive"):
        config_from_dict(architecture, {**raw, name: 0})


def test_unknown_architectures_and_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown architecture 'lstm'"):
        configure("lstm", WINDOW, CHANNELS)
    with pytest.raises(ValueError, match="do not divide"):
        configure("attention", WINDOW, CHANNELS, d_model=8, heads=3)
    with pytest.raises(ValueError, match="not odd"):
        configure("conv", WINDOW, CHANNELS, kernel=4)
    with pytest.raises(ValueError, match="beta"):
        configure("vae", WINDOW, CHANNELS, beta=-1.0)
    with pytest.raises(ValueError, match="dense has no hyper-parameter 'heads'"):
        configure("dense", WINDOW, CHANNELS, heads=2)
    assert configure("attention", WINDOW, CHANNELS, hidden=7).d_model == 32  # not its knob
    conv = configure("conv", WINDOW, CHANNELS)
    with pytest.raises(ValueError, match="windows"):
        dataclasses.replace(conv, window=WINDOW + 1).check(WINDOW, CHANNELS)

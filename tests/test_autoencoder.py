import torch

from model.autoencoder import Autoencoder, AutoencoderConfig
from model.networks import l2_penalty, layers, loss_fn, parameter_count


def test_default_network_has_the_specified_parameter_count():
    model = Autoencoder(AutoencoderConfig())
    assert parameter_count(model) == 512_512 + 16_416 + 16_896 + 513_000 == 1_058_824


def test_layers_are_input_512_32_512_input_with_the_specified_counts():
    model = Autoencoder(AutoencoderConfig(input_dim=1000))
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert shapes == [(512, 1000), (32, 512), (512, 32), (1000, 512)]
    counts = [layer["parameters"] for layer in layers(model.state_dict())]
    assert counts == [512_512, 16_416, 16_896, 513_000]
    assert model(torch.zeros(3, 1000)).shape == (3, 1000)


def test_loss_is_mse_plus_lambda_times_squared_weight_norm():
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(input_dim=20, hidden=16, bottleneck=4))
    x = torch.randn(5, 20)
    loss, mse = loss_fn(model, x, 0.5)
    expected_mse = ((model(x) - x) ** 2).mean()
    norms = sum((m.weight**2).sum() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert torch.isclose(mse, expected_mse)
    assert torch.isclose(loss, expected_mse + 0.5 * norms)
    assert torch.isclose(l2_penalty(model), norms)

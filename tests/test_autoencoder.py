import torch

from model.autoencoder import Autoencoder, AutoencoderConfig, l2_penalty, loss_fn, parameter_count


def test_default_network_has_the_specified_parameter_count():
    model = Autoencoder(AutoencoderConfig())
    assert parameter_count(model) == 512_512 + 16_416 + 16_896 + 513_000 == 1_058_824


def test_layers_are_input_512_32_512_input():
    model = Autoencoder(AutoencoderConfig(input_dim=200))
    shapes = [tuple(w.shape) for w in model.weights()]
    assert shapes == [(512, 200), (32, 512), (512, 32), (200, 512)]
    assert model(torch.zeros(3, 200)).shape == (3, 200)


def test_l2_gradient_is_two_lambda_w_on_weights_and_zero_on_biases():
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(input_dim=20, hidden=16, bottleneck=4))
    lam = 0.01
    (lam * l2_penalty(model)).backward()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            assert torch.allclose(module.weight.grad, 2 * lam * module.weight)
            assert module.bias.grad is None or torch.count_nonzero(module.bias.grad) == 0


def test_loss_is_mse_plus_lambda_times_squared_weight_norm():
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(input_dim=20, hidden=16, bottleneck=4))
    x = torch.randn(5, 20)
    loss, mse = loss_fn(model, x, 0.5)
    expected_mse = ((model(x) - x) ** 2).mean()
    norms = sum((m.weight**2).sum() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert torch.isclose(mse, expected_mse)
    assert torch.isclose(loss, expected_mse + 0.5 * norms)

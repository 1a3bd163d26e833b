import math

import torch

from model.vae import VaeConfig, VariationalAutoencoder, kl_divergence, reparameterise


def test_kl_term_matches_its_closed_form():
    # KL(N(mu, s^2) || N(0, 1)) = (s^2 + mu^2 - 1) / 2 - ln s, summed over dimensions
    mean = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.0, 0.0]])
    log_var = torch.tensor([[0.0, 0.0, math.log(4.0)], [math.log(0.25), 1.0, -1.0]])
    s2 = log_var.exp()
    by_hand = ((s2 + mean**2 - 1) / 2 - 0.5 * log_var).sum(dim=1)
    assert torch.allclose(kl_divergence(mean, log_var), by_hand)
    assert math.isclose(
        kl_divergence(mean, log_var)[0].item(),
        0 + 0.5 + (4 + 4 - 1) / 2 - math.log(2),
        rel_tol=1e-6,
    )
    dist = torch.distributions
    library = dist.kl_divergence(
        dist.Normal(mean, (0.5 * log_var).exp()), dist.Normal(torch.zeros(3), torch.ones(3))
    ).sum(dim=1)
    assert torch.allclose(kl_divergence(mean, log_var), library, atol=1e-6)
    assert kl_divergence(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_reparameterisation_gives_gradients_to_mean_and_log_variance():
    torch.manual_seed(0)
    mean = torch.tensor([0.3, -1.0], requires_grad=True)
    log_var = torch.tensor([0.0, math.log(4.0)], requires_grad=True)
    z = reparameterise(mean, log_var)
    eps = (z - mean) / (0.5 * log_var).exp()  # the noise that was drawn
    z.sum().backward()
    assert torch.allclose(mean.grad, torch.ones(2))  # dz/dmean = 1
    expected = 0.5 * (0.5 * log_var).exp() * eps  # dz/dlog_var = sigma * eps / 2
    assert torch.allclose(log_var.grad, expected.detach())
    assert (log_var.grad != 0).all()


def test_training_samples_the_code_and_scoring_decodes_the_mean():
    torch.manual_seed(0)
    net = VariationalAutoencoder(VaeConfig(input_dim=12, hidden=8, bottleneck=3, beta=0.5))
    x = torch.randn(4, 12)
    mean, log_var = net.encode(x)
    assert torch.equal(net(x), net.decoder(mean))
    torch.manual_seed(1)
    loss_a, mse_a = net.objective(x)
    torch.manual_seed(2)
    loss_b, mse_b = net.objective(x)
    assert mse_a != mse_b  # a new sample of the code each time
    assert torch.isclose(loss_a, mse_a + 0.5 * kl_divergence(mean, log_var).mean())

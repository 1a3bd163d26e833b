"""The written-out self-attention against a small example computed by hand, and against torch."""

import math

import pytest
import torch

from model.attention import AttentionAutoencoder, AttentionConfig, SelfAttention


def hand_module(project: bool) -> SelfAttention:
    """d = 2, one head (d_k = 2), weights simple enough to follow on paper."""
    attention = SelfAttention(2, heads=1, project=project)
    with torch.no_grad():
        attention.query.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        attention.query.bias.zero_()
        attention.key.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        attention.key.bias.zero_()
        attention.value.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
        attention.value.bias.copy_(torch.tensor([0.5, 0.0]))
        if project:
            attention.output.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
            attention.output.bias.copy_(torch.tensor([1.0, 0.0]))
    return attention


TOKENS = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, T=2, d=2): x_1, x_2


def softmax(*scores: float) -> list[float]:
    exps = [math.exp(s) for s in scores]
    return [e / sum(exps) for e in exps]


def hand_example(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha and z for TOKENS, written out; scale divides the scores."""
    # q_1 = (1, 0), q_2 = (0, 1); k_1 = (2, 0), k_2 = (0, 1); v_1 = (1.5, 0), v_2 = (1.5, 1)
    # score(1, 1) = 2, score(1, 2) = 0, score(2, 1) = 0, score(2, 2) = 1, before scaling
    alpha = torch.tensor([softmax(2 / scale, 0.0), softmax(0.0, 1 / scale)])
    v = torch.tensor([[1.5, 0.0], [1.5, 1.0]])
    z = torch.stack(
        [alpha[0, 0] * v[0] + alpha[0, 1] * v[1], alpha[1, 0] * v[0] + alpha[1, 1] * v[1]]
    )
    return alpha, z


def test_weights_alpha_and_z_match_the_hand_example_scaled_by_sqrt_d_k():
    attention = hand_module(project=False)
    out, alpha = attention.attend(TOKENS)
    want_alpha, want_z = hand_example(scale=math.sqrt(2))
    assert torch.allclose(alpha[0, 0], want_alpha, atol=1e-6)
    assert torch.allclose(out[0], want_z, atol=1e-6)  # no projection: the output is z
    assert torch.allclose(want_z, torch.tensor([[1.5, 0.19560], [1.5, 0.66976]]), atol=1e-4)
    # Without the 1 / sqrt(d_k) the same weights would give other attention.
    unscaled_alpha, _ = hand_example(scale=1.0)
    assert not torch.allclose(alpha[0, 0], unscaled_alpha, atol=1e-3)


def test_the_output_projection_is_applied_to_z():
    out = hand_module(project=True)(TOKENS)[0]
    _, z = hand_example(scale=math.sqrt(2))
    # W_o swaps the two coordinates, b_o adds 1 to the first
    assert torch.allclose(out, torch.stack([z[:, 1] + 1.0, z[:, 0]], dim=1), atol=1e-6)
    assert hand_module(project=False).output is None


def random_tokens(seed: int, tokens: int = 5, d: int = 8) -> torch.Tensor:
    return torch.randn(3, tokens, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_every_row_of_alpha_sums_to_one(heads):
    torch.manual_seed(0)
    _, alpha = SelfAttention(8, heads).attend(random_tokens(1))
    assert alpha.shape == (3, heads, 5, 5)
    assert torch.allclose(alpha.sum(dim=-1), torch.ones(3, heads, 5), atol=1e-6)
    assert (alpha >= 0).all()


def test_permuting_the_tokens_permutes_the_output_without_a_position_encoding():
    torch.manual_seed(0)
    attention = SelfAttention(8, heads=2)
    x = random_tokens(2)
    order = torch.tensor([3, 0, 4, 1, 2])
    out, alpha = attention.attend(x)
    out_p, alpha_p = attention.attend(x[:, order])
    assert torch.allclose(out_p, out[:, order], atol=1e-5)
    assert torch.allclose(alpha_p, alpha[:, :, order][:, :, :, order], atol=1e-6)


def test_the_autoencoder_s_position_encoding_breaks_that_symmetry():
    torch.manual_seed(0)
    net = AttentionAutoencoder(AttentionConfig(window=5, channels=3, d_model=8, bottleneck=4))
    x = torch.randn(2, 5, 3)
    order = torch.tensor([1, 0, 2, 3, 4])
    out = net(x.reshape(2, -1)).view(2, 5, 3)
    out_p = net(x[:, order].reshape(2, -1)).view(2, 5, 3)
    assert not torch.allclose(out_p, out[:, order], atol=1e-4)


@pytest.mark.parametrize(("heads", "project"), [(1, True), (2, True), (4, False)])
def test_matches_torch_scaled_dot_product_attention(heads, project):
    torch.manual_seed(3)
    attention = SelfAttention(8, heads, project)
    x = random_tokens(4)
    b, t, d = x.shape

    def split(linear: torch.nn.Linear) -> torch.Tensor:
        return linear(x).view(b, t, heads, d // heads).transpose(1, 2)

    z = torch.nn.functional.scaled_dot_product_attention(
        split(attention.query), split(attention.key), split(attention.value)
    )
    z = z.transpose(1, 2).reshape(b, t, d)
    expected = attention.output(z) if project else z
    assert torch.allclose(attention(x), expected, atol=1e-5)


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="do not divide"):
        SelfAttention(8, heads=3)

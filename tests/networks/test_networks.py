"""Tests of diffuseg.networks: the conditional denoiser U-Net and the segmentation U-Net."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SIZE
from torch import nn

from diffuseg.errors import ConfigError, DataError
from diffuseg.networks import ConditionalUNet, SegmentationUNet, count_parameters
from diffuseg.networks.blocks import ResBlock, dropout, multihead_attention, timestep_embedding


def randomise(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Overwrite every parameter with N(0, scale^2): the output conv is zero-initialised, so an
    untrained network would pass any "input X changes the output" test trivially-wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def tensor(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def small_unet(spatial_dims: int = 2, **kw) -> ConditionalUNet:
    args = dict(
        spatial_dims=spatial_dims, in_channels=2, cond_channels=3, out_channels=2,
        channels=(8, 16), num_res_blocks=1, attention_levels=(False, True), norm_groups=4,
        num_heads=2,
    )  # fmt: skip
    args.update(kw)
    return randomise(ConditionalUNet(**args)).eval()


def inputs(spatial_dims: int, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, ...]:
    sp = SIZE[spatial_dims]
    x, cond = tensor(batch, 2, *sp, seed=seed), tensor(batch, 3, *sp, seed=seed + 1)
    return x, torch.tensor([3, 700][:batch]), cond


# ------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize(
    "spatial_dims, shape, channels, blocks, attention, emb_channels",
    [
        (2, (16, 16), (8, 16), 1, (False, True), 0),
        (2, (16, 8), (8, 16, 16), 2, (False, False, True), 5),
        (2, (8, 16), (8,), 1, (True,), 0),
        (3, (8, 8, 8), (8, 16), 1, (False, True), 0),
        (3, (8, 4, 8), (8, 8, 16), 1, (True, False, True), 3),
    ],
)
def test_conditional_unet_shapes(spatial_dims, shape, channels, blocks, attention, emb_channels):
    net = ConditionalUNet(
        spatial_dims, 2, 3, 4, channels, blocks, attention, norm_groups=4, num_heads=2,
        emb_channels=emb_channels,
    )  # fmt: skip
    emb = tensor(2, emb_channels) if emb_channels else None
    out = net(tensor(2, 2, *shape), torch.tensor([0, 9]), tensor(2, 3, *shape), emb)
    assert out.shape == (2, 4, *shape)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("attention", [(False, False), (True, True)])
def test_segmentation_unet_shapes(spatial_dims, attention):
    net = SegmentationUNet(spatial_dims, 1, 3, (8, 16), 1, 4, 0.1, attention, num_heads=2)
    out = net(tensor(2, 1, *SIZE[spatial_dims]))
    assert out.shape == (2, 3, *SIZE[spatial_dims])


def test_untrained_denoiser_predicts_zero():
    """The output conv is zero-initialised (improved-diffusion's convention)."""
    net = ConditionalUNet(2, 2, 3, 2, (8, 16), 1, (False, True), 4, num_heads=2)
    assert torch.equal(net(*inputs(2)[:2], inputs(2)[2]), torch.zeros(2, 2, 16, 16))


# ------------------------------------------------------------------------------------------
# inputs matter, examples stay independent


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_time_cond_and_emb_change_the_output(spatial_dims):
    net = small_unet(spatial_dims, emb_channels=3)
    x, t, cond = inputs(spatial_dims)
    emb = tensor(2, 3, seed=5)
    with torch.no_grad():
        base = net(x, t, cond, emb)
        other_t = net(x, t + 100, cond, emb)
        other_cond = net(x, t, cond.flip(0), emb)
        other_emb = net(x, t, cond, emb + 1.0)
        other_x = net(x.flip(0), t, cond, emb)
    for changed in (other_t, other_cond, other_emb, other_x):
        diff = (changed - base).abs().amax(dim=tuple(range(1, base.ndim)))
        assert (diff > 1e-3 * base.abs().max()).all()


def test_examples_do_not_interact():
    """Changing example 1 leaves example 0's output unchanged (no batch-mixing layer)."""
    net = small_unet(2)
    x, t, cond = inputs(2)
    x2, t2, cond2 = x.clone(), t.clone(), cond.clone()
    x2[1], t2[1], cond2[1] = -x[1], 5, 0.0
    with torch.no_grad():
        a, b = net(x, t, cond), net(x2, t2, cond2)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[1], b[1])


def test_scalar_t_equals_repeated_t():
    net = small_unet(2)
    x, _, cond = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(
            net(x, torch.tensor(7), cond), net(x, torch.tensor([7, 7]), cond)
        )


# ------------------------------------------------------------------------------------------
# gradients


def _assert_all_grads(net: nn.Module, nonzero: bool) -> None:
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        if nonzero:
            assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradients_reach_every_parameter(spatial_dims):
    net = small_unet(spatial_dims, emb_channels=2, attention_levels=(True, True)).train()
    x, t, cond = inputs(spatial_dims)
    net(x, t, cond, tensor(2, 2)).square().mean().backward()
    _assert_all_grads(net, nonzero=True)


def test_gradients_reach_every_parameter_at_init():
    net = ConditionalUNet(2, 2, 3, 2, (8, 16), 1, (False, True), 4, num_heads=2)
    x, t, cond = inputs(2)
    net(x, t, cond).sum().backward()
    _assert_all_grads(net, nonzero=False)  # zero output conv: upstream grads are exactly 0


def test_segmentation_gradients_reach_every_parameter():
    net = randomise(SegmentationUNet(3, 1, 2, (8, 16), 1, 4, 0.2, (False, True), num_heads=2))
    net(tensor(1, 1, 8, 8, 8)).square().mean().backward()
    _assert_all_grads(net, nonzero=True)


# ------------------------------------------------------------------------------------------
# user errors


def test_bad_inputs_raise_data_error():
    net = ConditionalUNet(2, 2, 3, 2, (8, 16, 16), 1, (False, False, True), 4, num_heads=2)
    x, t, cond = inputs(2)
    with pytest.raises(DataError, match="divisible by 4"):
        net(x[..., :14], t, cond[..., :14])
    with pytest.raises(DataError, match="cond .* required"):
        net(x, t)
    with pytest.raises(DataError, match="3 channels but the network was built for 2"):
        net(tensor(2, 3, 16, 16), t, cond)
    with pytest.raises(DataError, match="2 channels but the network was built for 3"):
        net(x, t, cond[:, :2])
    with pytest.raises(DataError, match="does not match x shape"):
        net(x, t, cond[:1])
    with pytest.raises(DataError, match="spatial_dims=2 needs 4"):
        net(x[..., None], t, cond[..., None])
    with pytest.raises(DataError, match="one step per example"):
        net(x, torch.tensor([1, 2, 3]), cond)
    with pytest.raises(DataError, match="emb_channels=0"):
        net(x, t, cond, tensor(2, 3))
    with_emb = ConditionalUNet(2, 2, 3, 2, (8, 16), 1, (False, False), 4, emb_channels=3)
    with pytest.raises(DataError, match=r"emb must be \[2, 3\]"):
        with_emb(x, t, cond)
    unconditional = ConditionalUNet(2, 2, 0, 2, (8, 16), 1, (False, False), 4)
    assert unconditional(x, t).shape == x.shape
    with pytest.raises(DataError, match="cond_channels=0"):
        unconditional(x, t, cond)


def test_bad_configuration_raises_config_error():
    with pytest.raises(ConfigError, match="norm_groups=3 does not divide"):
        ConditionalUNet(2, 1, 1, 1, (8, 16), 1, (False, False), norm_groups=3)
    with pytest.raises(ConfigError, match="norm_groups=4 does not divide channel width 6"):
        SegmentationUNet(2, 1, 1, (8, 6), norm_groups=4)
    with pytest.raises(ConfigError, match="attention_levels has 3 entries"):
        ConditionalUNet(2, 1, 1, 1, (8, 16), 1, (False, False, True), norm_groups=4)
    with pytest.raises(ConfigError, match="num_heads=3 does not divide"):
        ConditionalUNet(2, 1, 1, 1, (8, 16), 1, (False, True), 4, num_heads=3)
    with pytest.raises(ConfigError, match="spatial_dims=1"):
        SegmentationUNet(1, 1, 1, (8, 16), norm_groups=4)
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)


# ------------------------------------------------------------------------------------------
# precision and determinism


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bf16_autocast_close_to_fp32(spatial_dims):
    net = small_unet(spatial_dims, attention_levels=(True, True))
    x, t, cond = inputs(spatial_dims)
    with torch.no_grad():
        ref = net(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, t, cond)
    assert low.dtype == torch.bfloat16  # autocast really ran the convolutions in bf16
    rel = (low.float() - ref).norm() / ref.norm()
    # bf16 keeps 8 significant bits (unit roundoff 2^-9 ~ 0.2%); a few dozen layers stay
    # well under 5% relative error, while a wrong cast (e.g. lost time embedding) is O(1).
    assert rel < 0.05


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    net = small_unet(2, dropout=0.5)
    x, t, cond = inputs(2)
    with torch.no_grad():
        assert torch.equal(net(x, t, cond), net(x, t, cond))
        net.train()
        assert not torch.allclose(net(x, t, cond), net(x, t, cond))


def test_segmentation_mc_dropout():
    net = randomise(SegmentationUNet(2, 1, 2, (8, 16), 1, 4, dropout=0.3)).eval()
    x = tensor(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        a, b = net(x, mc_dropout=True), net(x, mc_dropout=True)
        assert not torch.allclose(a, b)
        assert not torch.allclose(a, net(x))
        same = [net(x, mc_dropout=True, generator=torch.Generator().manual_seed(3)) for _ in "ab"]
        assert torch.equal(same[0], same[1])
        other = net(x, mc_dropout=True, generator=torch.Generator().manual_seed(4))
        assert not torch.allclose(same[0], other)
        net.train()
        assert not torch.allclose(net(x), net(x))
    no_dropout = randomise(SegmentationUNet(2, 1, 2, (8, 16), 1, 4, dropout=0.0)).eval()
    with torch.no_grad():
        assert torch.equal(no_dropout(x, mc_dropout=True), no_dropout(x))


# ------------------------------------------------------------------------------------------
# blocks against closed forms and references


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0, 3]), 4)  # w = (1, 10000^-1/2 = 0.01)
    expected = torch.tensor(
        [[1.0, 1.0, 0.0, 0.0], [math.cos(3), math.cos(0.03), math.sin(3), math.sin(0.03)]]
    )
    torch.testing.assert_close(emb, expected)
    assert timestep_embedding(torch.tensor([2]), 5).shape == (1, 5)
    assert timestep_embedding(torch.tensor([2]), 5)[0, -1] == 0


def test_multihead_attention_matches_reference():
    q, k, v = tensor(2, 5, 8, seed=1), tensor(2, 7, 8, seed=2), tensor(2, 7, 8, seed=3)
    heads, d = 2, 4
    out = multihead_attention(q, k, v, heads)
    ref = []
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(d), dim=-1)
        ref.append(w @ v[..., s])
    torch.testing.assert_close(out, torch.cat(ref, dim=-1))


def test_dropout_is_inverted_bernoulli():
    x = torch.ones(20000)
    y = dropout(x, 0.25, True, torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.unique(y), torch.tensor([0.0, 1 / 0.75]))
    assert abs((y == 0).float().mean().item() - 0.25) < 0.02  # binomial sd ~0.003
    assert torch.equal(dropout(x, 0.25, False, None), x)


def test_resblock_film_needs_emb():
    block = ResBlock(2, 4, 8, emb_dim=6, norm_groups=4)
    with pytest.raises(ValueError, match="needs emb"):
        block(tensor(1, 4, 4, 4))
    assert block(tensor(1, 4, 4, 4), tensor(1, 6)).shape == (1, 8, 4, 4)


def test_count_parameters():
    conv = nn.Conv2d(2, 3, 3)
    assert count_parameters(conv) == 2 * 3 * 9 + 3
    conv.bias.requires_grad_(False)
    assert count_parameters(conv) == 2 * 3 * 9
    net = small_unet(2)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())

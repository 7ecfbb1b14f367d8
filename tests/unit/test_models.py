"""Backbones and heads: shapes, gradients, the noise contract and the Gaussian-logit facts."""

from __future__ import annotations

import pytest
import torch

from models import METHODS, ModelConfig, build_model, list_backbones, noise_to_margin
from models.heads import MFDVConfig, MFDVHead, WCAConfig, WCAHead


def _cfg(arch: str, method: str, **kw) -> ModelConfig:
    size, chans = (32, 3) if arch == "resnet18" else (28, 1)
    return ModelConfig(
        arch=arch,
        method=method,
        in_chans=chans,
        img_size=size,
        feature_dim=16,
        mean=[0.5] * chans,
        std=[0.25] * chans,
        **kw,
    )


@pytest.mark.parametrize("arch", list_backbones())
@pytest.mark.parametrize("method", METHODS)
def test_forward_shape_and_every_parameter_gets_a_gradient(arch: str, method: str) -> None:
    torch.manual_seed(0)
    model = build_model(_cfg(arch, method))
    c, h, w = model.cfg.input_shape
    x = torch.rand(2, c, h, w)
    logits = model(x, model.sample_noise(5))
    assert logits.shape == (5, 2, 10)
    assert torch.isfinite(logits).all()
    loss = logits.logsumexp(-1).mean() + model.head.regularizer()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


def test_unknown_names_fail_loudly() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        build_model(ModelConfig(arch="nope"))
    with pytest.raises(ValueError, match="choose one of"):
        ModelConfig(method="nope")
    with pytest.raises(ValueError, match=r"(?s)bogus.*Extra inputs are not permitted"):
        ModelConfig.from_dict({"arch": "small_cnn", "bogus": 1})


@pytest.mark.parametrize("method", METHODS)
def test_noise_is_explicit_not_tied_to_training_mode(method: str) -> None:
    torch.manual_seed(0)
    model = build_model(_cfg("tiny_cnn", method)).eval()
    x = torch.rand(3, 1, 28, 28)
    noise = model.sample_noise(4)
    with torch.no_grad():
        a = model(x, noise)
        nf = model(x, None)
    model.head.train()
    with torch.no_grad():
        b = model.head(model.features(x), noise)
    torch.testing.assert_close(a, b)
    assert nf.shape == (1, 3, 10)
    if method == "vanilla":
        torch.testing.assert_close(a, nf.expand_as(a))
    else:
        assert not torch.allclose(a[0], a[1])


def test_head_matches_hand_computation() -> None:
    head = MFDVHead(2, 2, MFDVConfig(sigma_init=0.5))
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        head.fc.bias.copy_(torch.tensor([0.5, -0.5]))
    mu = torch.tensor([[1.0, 1.0]])
    noise = torch.tensor([[2.0, -1.0]])  # z = mu + 0.5 * noise = [2.0, 0.5]
    logits = head(mu, noise)
    torch.testing.assert_close(logits, torch.tensor([[[2.5, 0.5]]]))
    # regularizer: -mean log sigma^2 with sigma = 0.5
    torch.testing.assert_close(head.regularizer(), -torch.log(torch.tensor(0.25)))


def test_per_input_noise_matches_shared_noise_when_equal() -> None:
    torch.manual_seed(0)
    head = WCAHead(feature_dim=4, num_classes=3)
    with torch.no_grad():
        head.L.add_(torch.randn(4, 4) * 0.1)
    mu = torch.randn(5, 4)
    shared = torch.randn(6, 4)
    per_input = shared[:, None, :].expand(6, 5, 4)
    torch.testing.assert_close(head(mu, shared), head(mu, per_input))


@pytest.mark.parametrize("method", ["fixed", "mfdv", "wca"])
def test_logits_are_gaussian_with_closed_form_mean_and_covariance(method: str) -> None:
    torch.manual_seed(0)
    model = build_model(_cfg("tiny_cnn", method)).eval()
    if method == "wca":
        with torch.no_grad():
            model.head.L.add_(torch.randn(16, 16) * 0.1)
    x = torch.rand(1, 1, 28, 28)
    with torch.no_grad():
        draws = model(x, model.sample_noise(40000))[:, 0]  # (T, K)
        nf = model(x, None)[0, 0]
        cov = model.head.logit_covariance()
    # E[logits] is the noise-free network; Cov = W Sigma W^T.
    torch.testing.assert_close(draws.mean(0), nf, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), cov, atol=0.05 * float(cov.diagonal().max()), rtol=0)


def test_wca_covariance_is_lower_triangular_product() -> None:
    head = WCAHead(3, 2, WCAConfig(sigma_init=1.0))
    with torch.no_grad():
        head.L.copy_(torch.tensor([[1.0, 9.0, 9.0], [2.0, 1.0, 9.0], [3.0, 4.0, 1.0]]))
    low = torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [3.0, 4.0, 1.0]])
    torch.testing.assert_close(head.covariance(), low @ low.T)
    noise = torch.tensor([[1.0, 1.0, 1.0]])
    torch.testing.assert_close(head.scale_noise(noise), torch.tensor([[1.0, 3.0, 8.0]]))


def test_sigma_max_and_mu_bound_bound_the_scales() -> None:
    torch.manual_seed(0)
    model = build_model(_cfg("tiny_cnn", "mfdv", sigma_max=0.3, mu_bound=2.0))
    with torch.no_grad():
        model.head.s.fill_(10.0)
        model.proj.weight.mul_(1000)
    assert float(model.head.sigma().detach().max()) == pytest.approx(0.3)
    assert float(model.features(torch.rand(4, 1, 28, 28)).abs().max()) <= 2.0


def test_noise_to_margin_is_zero_without_noise_and_grows_with_sigma() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    van = build_model(_cfg("tiny_cnn", "vanilla")).eval()
    assert float(noise_to_margin(van, x).max()) == 0.0
    model = build_model(_cfg("tiny_cnn", "fixed", fixed_sigma=0.1)).eval()
    small = noise_to_margin(model, x)
    model.head.sigma_value.fill_(1.0)
    torch.testing.assert_close(noise_to_margin(model, x), small * 10, rtol=1e-4, atol=0)

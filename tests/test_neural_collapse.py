"""NC1/NC2 against closed forms and a float64 numpy reference written from the definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcollapse.diagnostics.neural_collapse import nc2_from_means, nc_stats


def _numpy_nc1(h: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    classes = np.unique(y)
    means = np.stack([h[y == c].mean(axis=0) for c in classes])
    mu_g = means.mean(axis=0)
    sigma_b = sum(np.outer(m - mu_g, m - mu_g) for m in means) / len(classes)
    residuals = [h[i] - means[np.searchsorted(classes, y[i])] for i in range(len(h))]
    sigma_w = sum(np.outer(r, r) for r in residuals) / len(h)
    return float(np.trace(sigma_w)), float(np.trace(sigma_b)), float(np.trace(sigma_w) / np.trace(sigma_b))


def test_nc1_matches_numpy_reference_on_unbalanced_classes():
    rng = np.random.default_rng(0)
    y = rng.choice([3, 7, 9], size=60, p=[0.6, 0.3, 0.1])
    h = rng.normal(size=(60, 5)) + 2.0 * y[:, None]
    stats = nc_stats(torch.tensor(h), torch.tensor(y))
    tr_w, tr_b, nc1 = _numpy_nc1(h, y)
    assert stats.num_classes == 3
    assert stats.tr_within == pytest.approx(tr_w, rel=1e-12)
    assert stats.tr_between == pytest.approx(tr_b, rel=1e-12)
    assert stats.nc1 == pytest.approx(nc1, rel=1e-12)
    assert stats.tr_total == pytest.approx(float(((h - h.mean(0)) ** 2).sum() / len(h)), rel=1e-12)


def test_nc1_is_zero_when_every_sample_equals_its_class_mean():
    means = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3] * 5)
    stats = nc_stats(means[labels], labels)
    assert stats.nc1 == pytest.approx(0.0, abs=1e-25)
    assert stats.tr_between > 0


def test_nc1_is_scale_invariant_and_grows_with_noise():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    centres = rng.normal(size=(3, 8)) * 3
    noise = rng.normal(size=(60, 8))
    small = nc_stats(torch.tensor(centres[y] + 0.1 * noise), torch.tensor(y)).nc1
    big = nc_stats(torch.tensor(centres[y] + 1.0 * noise), torch.tensor(y)).nc1
    scaled = nc_stats(torch.tensor(5.0 * (centres[y] + 1.0 * noise)), torch.tensor(y)).nc1
    assert small < big
    assert scaled == pytest.approx(big, rel=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_nc2_is_zero_for_an_exact_simplex_etf_in_any_rotation_and_scale(k):
    rng = np.random.default_rng(k)
    etf = np.eye(k) - 1.0 / k  # centred standard basis: a simplex ETF in R^k
    q, _ = np.linalg.qr(rng.normal(size=(k + 3, k + 3)))
    means = 4.2 * np.pad(etf, ((0, 0), (0, 3))) @ q.T + rng.normal(size=k + 3)  # rotate, scale, shift
    assert nc2_from_means(torch.tensor(means)) == pytest.approx(0.0, abs=1e-20)


def test_nc2_matches_the_etf_deviation_for_random_means():
    rng = np.random.default_rng(4)
    means = rng.normal(size=(4, 6))
    centred = means - means.mean(0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    etf = np.eye(4) * 4 / 3 - 1 / 3
    expected = float(((unit @ unit.T - etf) ** 2).mean())
    assert expected > 1e-3
    assert nc2_from_means(torch.tensor(means)) == pytest.approx(expected, rel=1e-12)


def test_nc2_is_zero_for_two_classes_by_construction():
    h = torch.randn(30, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labels = torch.arange(30) % 2
    assert nc_stats(h, labels).nc2 == pytest.approx(0.0, abs=1e-24)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="two classes"):
        nc_stats(torch.ones(5, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="expected features"):
        nc_stats(torch.ones(5, 2), torch.zeros(4, dtype=torch.long))

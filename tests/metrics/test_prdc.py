from __future__ import annotations

import numpy as np
import pytest
import torch

from genlab.metrics import prdc


def test_equals_the_authors_package() -> None:
    reference = pytest.importorskip("prdc")
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16)).astype("float32")
    fake = (rng.normal(size=(200, 16)) + 0.3).astype("float32")
    ours = prdc(torch.from_numpy(real), torch.from_numpy(fake), nearest_k=5)
    theirs = reference.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(float(value), abs=1e-6), key


def test_shifted_fakes_lose_fidelity_and_coverage() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 8, generator=g)
    same = prdc(real, torch.randn(500, 8, generator=g))
    far = prdc(real, torch.randn(500, 8, generator=g) + 3)
    assert far["precision"] < 0.2 < 0.6 < same["precision"]
    assert far["coverage"] < 0.2 < 0.8 < same["coverage"]


def test_duplicated_reals_do_not_zero_density() -> None:
    real = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    fake = real[:100] + 1e-3
    assert prdc(torch.cat([real, real]), fake)["density"] == pytest.approx(prdc(real, fake)["density"])


@pytest.mark.slow
def test_identical_gaussians_match_the_readme_values() -> None:
    """prdc's README: 10,000 real and fake N(0, I) in 1,000 dims, k=5 gives precision 0.4772,
    recall 0.4705, density 1.0555, coverage 0.9735 ("may fluctuate": seen +-0.03 on density)."""
    g = torch.Generator().manual_seed(0)
    out = prdc(torch.randn(10_000, 1000, generator=g), torch.randn(10_000, 1000, generator=g), nearest_k=5)
    assert out["precision"] == pytest.approx(0.4772, abs=0.01)
    assert out["recall"] == pytest.approx(0.4705, abs=0.01)
    assert out["density"] == pytest.approx(1.0555, abs=0.05)
    assert out["coverage"] == pytest.approx(0.9735, abs=0.01)

"""The shared in-memory adapter form: scaling conventions, shape checks, copies."""
from __future__ import annotations

import math

import pytest
import torch

from declora.core.factors import Adapter, LoraFactor, scaling_for


def test_scaling_conventions():
    assert scaling_for(16, 8) == 2.0
    assert scaling_for(16, 4, rslora=True) == 8.0
    assert math.isclose(scaling_for(0.7 * 3, 3), 0.7) and math.isclose(scaling_for(0.7 * math.sqrt(3), 3, rslora=True), 0.7)


def test_factor_shapes_and_product():
    A, B = torch.randn(3, 5), torch.randn(7, 3)
    f = LoraFactor(A, B, alpha=6.0)
    assert (f.r, f.in_features, f.out_features, f.scaling) == (3, 5, 7, 2.0)
    torch.testing.assert_close(f.product(), 2.0 * B @ A)
    with pytest.raises(ValueError, match="rank mismatch"):
        LoraFactor(torch.randn(3, 5), torch.randn(7, 4), alpha=1.0)
    with pytest.raises(ValueError, match="2-D"):
        LoraFactor(torch.randn(3), torch.randn(7, 3), alpha=1.0)


def test_adapter_clone_is_independent_and_counts_parameters():
    a = Adapter({"m": LoraFactor(torch.zeros(2, 4), torch.zeros(3, 2), 2.0)}, {"head": torch.zeros(5)})
    b = a.clone()
    b.factors["m"].A.add_(1.0)
    b.dense["head"].add_(1.0)
    assert float(a.factors["m"].A.abs().sum()) == 0.0 and float(a.dense["head"].abs().sum()) == 0.0
    assert a.num_parameters() == 8 + 6 + 5
    assert a.ranks() == {"m": 2}
    assert a.to(torch.float64).factors["m"].B.dtype == torch.float64

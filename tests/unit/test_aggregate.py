"""The aggregation modes against dense (out x in) references on small shapes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from declora.core.aggregate import (
    check_weights,
    consensus_distance,
    data_share_weights,
    factor_averaging_error,
    gossip,
    merged_delta,
    stack,
    svd,
    zeropad,
)
from declora.core.factors import Adapter, LoraFactor

SHAPES = {"layer.0.q": (12, 10), "layer.0.v": (9, 12)}  # module key -> (out, in)
FAST = settings(max_examples=20, deadline=None)


def make_adapter(gen, ranks, alpha=16.0, rslora=False, shapes=SHAPES, dtype=torch.float32, dense=True) -> Adapter:
    """Random adapter with non-zero B (a trained one, not a fresh init). ranks: one int or per-module dict."""
    factors = {}
    for key, (out, inn) in shapes.items():
        r = ranks[key] if isinstance(ranks, dict) else ranks
        A = torch.randn(r, inn, generator=gen, dtype=torch.float64).to(dtype)
        B = torch.randn(out, r, generator=gen, dtype=torch.float64).to(dtype)
        factors[key] = LoraFactor(A, B, alpha, rslora)
    dense_t = {"classifier.weight": torch.randn(3, 5, generator=gen).to(dtype)} if dense else {}
    return Adapter(factors, dense_t)


def exact_sum(adapters, weights) -> dict[str, torch.Tensor]:
    """sum_j m_j s_j B_j A_j in float64, the dense reference."""
    return {
        key: sum(m * a.factors[key].to(torch.float64).product() for a, m in zip(adapters, weights))
        for key in adapters[0].factors
    }


def rel_err(X: torch.Tensor, Y: torch.Tensor) -> float:
    return float(torch.linalg.norm(X.double() - Y.double()) / torch.linalg.norm(Y.double()))


def random_weights(gen, n) -> list[float]:
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    return (w / w.sum()).tolist()


mixes = st.lists(
    st.tuples(st.integers(1, 6), st.sampled_from([1.0, 4.0, 8.0, 16.0, 32.0])), min_size=1, max_size=4
)  # (rank, alpha) per adapter


# --- stack ------------------------------------------------------------------------------------------------------


@FAST
@given(mix=mixes, rslora=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_stack_is_exact_for_mixed_ranks_and_alphas(mix, rslora, seed):
    gen = torch.Generator().manual_seed(seed)
    adapters = [make_adapter(gen, r, alpha, rslora) for r, alpha in mix]
    w = random_weights(gen, len(adapters))
    out = stack(adapters, w)
    ref = exact_sum(adapters, w)
    R = sum(r for r, _ in mix)
    deltas = merged_delta(out)
    for key, f in out.factors.items():
        assert f.r == R and f.scaling == 1.0 and f.A.dtype == torch.float32
        assert rel_err(deltas[key], ref[key]) < 1e-5
        assert rel_err(f.product(), ref[key]) < 1e-5
    dense_ref = sum(m * a.dense["classifier.weight"] for a, m in zip(adapters, w))
    torch.testing.assert_close(out.dense["classifier.weight"], dense_ref)


def test_stack_keeps_zero_weight_slots():
    gen = torch.Generator().manual_seed(0)
    a, b = make_adapter(gen, 2), make_adapter(gen, 3)
    out = stack([a, b], [1.0, 0.0])
    f = out.factors["layer.0.q"]
    assert f.r == 5
    assert torch.count_nonzero(f.A[2:]) == 0  # b's slot carries weight 0
    assert rel_err(f.product(), a.factors["layer.0.q"].product()) < 1e-6


# --- svd --------------------------------------------------------------------------------------------------------


@FAST
@given(mix=mixes, rslora=st.booleans(), extra=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_svd_is_exact_when_stacked_rank_fits(mix, rslora, extra, seed):
    gen = torch.Generator().manual_seed(seed)
    adapters = [make_adapter(gen, r, alpha, rslora) for r, alpha in mix]
    w = random_weights(gen, len(adapters))
    R = sum(r for r, _ in mix)
    target = R + extra  # may exceed min(out, in): then zero padding
    out = svd(adapters, w, rank=target, alpha=8.0, rslora=rslora)
    ref = exact_sum(adapters, w)
    for key, f in out.factors.items():
        o, i = SHAPES[key]
        assert f.A.shape == (target, i) and f.B.shape == (o, target)
        assert f.alpha == 8.0 and f.rslora == rslora
        assert rel_err(f.product(), ref[key]) < 1e-5


@FAST
@given(mix=st.lists(st.tuples(st.integers(2, 6), st.sampled_from([4.0, 16.0])), min_size=2, max_size=4),
       r=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_svd_is_the_best_rank_r_approximation(mix, r, seed):
    gen = torch.Generator().manual_seed(seed)
    adapters = [make_adapter(gen, rk, alpha) for rk, alpha in mix]
    w = random_weights(gen, len(adapters))
    out = svd(adapters, w, rank=r, alpha=16.0)
    ref = exact_sum(adapters, w)
    for key, f in out.factors.items():
        assert f.r == r
        S_ref = torch.linalg.svdvals(ref[key])
        approx = f.product().double()
        S_got = torch.linalg.svdvals(approx)
        scale = float(S_ref[0])
        # the kept singular values are the top r of the dense sum, the rest is (numerically) zero
        assert torch.allclose(S_got[:r], S_ref[:r], atol=1e-5 * scale)
        assert float(S_got[r:].abs().sum()) < 1e-5 * scale
        # and the error is the Eckart-Young optimum sqrt(sum of the discarded sigma^2)
        err = float(torch.linalg.norm(approx - ref[key]))
        assert math.isclose(err, float(S_ref[r:].norm()), rel_tol=1e-4, abs_tol=1e-5 * scale)
        # where the truncation is unique (a singular-value gap), the product itself matches
        if S_ref[r - 1] - S_ref[r] > 1e-2 * scale:
            U, S, Vh = torch.linalg.svd(ref[key])
            best = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
            assert rel_err(approx, best) < 1e-4


def test_svd_per_module_ranks_and_balanced_factors():
    gen = torch.Generator().manual_seed(1)
    adapters = [make_adapter(gen, {"layer.0.q": 4, "layer.0.v": 2}), make_adapter(gen, 3)]
    out = svd(adapters, [0.5, 0.5], rank={"layer.0.q": 2, "layer.0.v": 5}, alpha=4.0, rslora=True)
    assert out.ranks() == {"layer.0.q": 2, "layer.0.v": 5}
    f = out.factors["layer.0.q"]
    # singular values split evenly: B's column norms equal A's row norms
    torch.testing.assert_close(f.B.norm(dim=0), f.A.norm(dim=1), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="layer.0.v"):
        svd(adapters, [0.5, 0.5], rank={"layer.0.q": 2}, alpha=4.0)


def test_svd_of_agreeing_peers_is_exact_despite_rank_deficient_stack():
    # at consensus the stacked factors are rank r out of R = n r: QR must not break down
    gen = torch.Generator().manual_seed(2)
    a = make_adapter(gen, 3)
    out = svd([a, a.clone(), a.clone()], [0.2, 0.3, 0.5], rank=3, alpha=16.0)
    for key, f in out.factors.items():
        assert rel_err(f.product(), a.factors[key].product()) < 1e-5


# --- gossip -----------------------------------------------------------------------------------------------------


def ring_metropolis(n: int) -> np.ndarray:
    M = np.zeros((n, n))
    for i in range(n):
        for j in (i - 1, i, i + 1):
            M[i, j % n] = 1.0 / 3.0  # degree 2 everywhere: 1 / (1 + max(2, 2)), diagonal gets the rest = 1/3
    return M


def disagreement(adapters) -> float:
    total = 0.0
    for key in adapters[0].factors:
        for part in ("A", "B"):
            X = torch.stack([getattr(a.factors[key], part).double() for a in adapters])
            total += float(((X - X.mean(0)) ** 2).sum())
    return total


def test_gossip_keeps_the_mean_and_contracts_at_the_spectral_rate():
    n = 8
    M = ring_metropolis(n)
    assert np.allclose(M.sum(0), 1) and np.allclose(M.sum(1), 1) and np.allclose(M, M.T)
    lam2 = sorted(np.abs(np.linalg.eigvals(M)))[-2]
    gen = torch.Generator().manual_seed(3)
    peers = [make_adapter(gen, 4, dtype=torch.float64) for _ in range(n)]
    key = "layer.0.q"
    mean_A0 = torch.stack([p.factors[key].A for p in peers]).mean(0)
    mean_B0 = torch.stack([p.factors[key].B for p in peers]).mean(0)
    d_prev = d0 = disagreement(peers)
    for _ in range(10):
        peers = [gossip([peers[j] for j in range(n) if M[i, j] > 0], [M[i, j] for j in range(n) if M[i, j] > 0])
                 for i in range(n)]
        torch.testing.assert_close(torch.stack([p.factors[key].A for p in peers]).mean(0), mean_A0)
        torch.testing.assert_close(torch.stack([p.factors[key].B for p in peers]).mean(0), mean_B0)
        d = disagreement(peers)
        assert d <= lam2**2 * d_prev * (1 + 1e-9)
        d_prev = d
    assert d_prev < 0.05 * d0  # and it did shrink: lam2^20 ~ 0.02 for the 8-ring


def test_gossip_averages_factors_and_keeps_alpha():
    gen = torch.Generator().manual_seed(4)
    a, b = make_adapter(gen, 3, alpha=6.0, rslora=True), make_adapter(gen, 3, alpha=6.0, rslora=True)
    out = gossip([a, b], [0.25, 0.75])
    f = out.factors["layer.0.v"]
    torch.testing.assert_close(f.A, 0.25 * a.factors["layer.0.v"].A + 0.75 * b.factors["layer.0.v"].A)
    torch.testing.assert_close(f.B, 0.25 * a.factors["layer.0.v"].B + 0.75 * b.factors["layer.0.v"].B)
    assert (f.alpha, f.rslora) == (6.0, True)


# --- zeropad ----------------------------------------------------------------------------------------------------


@FAST
@given(n=st.integers(1, 4), r=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_zeropad_with_equal_ranks_is_gossip(n, r, seed):
    gen = torch.Generator().manual_seed(seed)
    adapters = [make_adapter(gen, r, alpha=8.0) for _ in range(n)]
    w = random_weights(gen, n)
    g, z = gossip(adapters, w), zeropad(adapters, w, rank=r, alpha=8.0)
    for key in g.factors:
        assert torch.equal(g.factors[key].A, z.factors[key].A)
        assert torch.equal(g.factors[key].B, z.factors[key].B)
    assert torch.equal(g.dense["classifier.weight"], z.dense["classifier.weight"])


def test_zeropad_pads_truncates_and_folds_scaling_into_B():
    gen = torch.Generator().manual_seed(5)
    a = make_adapter(gen, 2, alpha=4.0)  # s = 2
    b = make_adapter(gen, 4, alpha=8.0)  # s = 2
    c = make_adapter(gen, 3, alpha=12.0)  # s = 4
    key = "layer.0.q"
    out = zeropad([a, b, c], [0.5, 0.25, 0.25], rank=3, alpha=3.0)  # target s = 1
    fa, fb, fc = (x.factors[key] for x in (a, b, c))
    A_ref = 0.25 * fb.A[:3] + 0.25 * fc.A
    A_ref[:2] += 0.5 * fa.A
    B_ref = 0.25 * 2.0 * fb.B[:, :3] + 0.25 * 4.0 * fc.B
    B_ref[:, :2] += 0.5 * 2.0 * fa.B
    f = out.factors[key]
    assert (f.r, f.alpha, f.scaling) == (3, 3.0, 1.0)
    torch.testing.assert_close(f.A, A_ref)
    torch.testing.assert_close(f.B, B_ref)
    # a target larger than every rank pads with zeros
    wide = zeropad([a, c], [0.5, 0.5], rank=6, alpha=6.0).factors[key]
    assert wide.r == 6 and torch.count_nonzero(wide.A[3:]) == 0 and torch.count_nonzero(wide.B[:, 3:]) == 0


def test_zeropad_single_adapter_keeps_its_product_at_a_new_alpha():
    gen = torch.Generator().manual_seed(6)
    a = make_adapter(gen, 4, alpha=16.0, rslora=True)
    out = zeropad([a], [1.0], rank=4, alpha=2.0)
    for key, f in out.factors.items():
        assert rel_err(f.product(), a.factors[key].product()) < 1e-6


# --- validation -------------------------------------------------------------------------------------------------


def two(gen, **kw):
    return make_adapter(gen, 3, **kw), make_adapter(gen, 3, **kw)


ALL_MODES = [
    pytest.param(lambda ads, w: gossip(ads, w), id="gossip"),
    pytest.param(lambda ads, w: stack(ads, w), id="stack"),
    pytest.param(lambda ads, w: svd(ads, w, rank=2, alpha=4.0), id="svd"),
    pytest.param(lambda ads, w: zeropad(ads, w, rank=2, alpha=4.0), id="zeropad"),
    pytest.param(lambda ads, w: factor_averaging_error(ads, w), id="factor_averaging_error"),
]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_mode_rejects_bad_input_naming_the_module(mode):
    gen = torch.Generator().manual_seed(7)
    a, b = two(gen)
    missing = Adapter({"layer.0.q": b.factors["layer.0.q"]}, b.dense)
    with pytest.raises(ValueError, match="layer.0.v"):
        mode([a, missing], [0.5, 0.5])
    wrong_shape = b.clone()
    f = wrong_shape.factors["layer.0.q"]
    wrong_shape.factors["layer.0.q"] = LoraFactor(torch.randn(3, 7), f.B, f.alpha)
    with pytest.raises(ValueError, match=r"layer\.0\.q.*\(out, in\)"):
        mode([a, wrong_shape], [0.5, 0.5])
    for bad in (float("nan"), float("inf")):
        poisoned = b.clone()
        poisoned.factors["layer.0.v"].B[1, 2] = bad
        with pytest.raises(ValueError, match=r"layer\.0\.v.*NaN or Inf"):
            mode([a, poisoned], [0.5, 0.5])
    poisoned = b.clone()
    poisoned.dense["classifier.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="classifier.weight"):
        mode([a, poisoned], [0.5, 0.5])
    for w in ([0.5, 0.6], [1.5, -0.5], [1.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match="weight"):
            mode([a, b], w)
    with pytest.raises(ValueError, match="no adapters"):
        mode([], [])
    with pytest.raises(ValueError, match="empty"):
        mode([Adapter(), Adapter()], [0.5, 0.5])


def test_weights_within_tolerance_pass():
    assert check_weights([0.5, 0.5 + 5e-7], 2) == [0.5, 0.5 + 5e-7]
    with pytest.raises(ValueError, match="sum"):
        check_weights([0.5, 0.5 + 5e-6], 2)


def test_gossip_needs_equal_ranks_and_scalings():
    gen = torch.Generator().manual_seed(8)
    a = make_adapter(gen, 3)
    with pytest.raises(ValueError, match=r"layer\.0\.q.*rank mismatch"):
        gossip([a, make_adapter(gen, 4)], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"layer\.0\.q.*scaling mismatch"):
        gossip([a, make_adapter(gen, 3, alpha=8.0)], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"layer\.0\.q.*scaling mismatch"):
        gossip([a, make_adapter(gen, 3, rslora=True)], [0.5, 0.5])
    # the other modes take any mix
    stack([a, make_adapter(gen, 4, alpha=8.0)], [0.5, 0.5])


def test_bad_targets_are_rejected():
    gen = torch.Generator().manual_seed(9)
    a, b = two(gen)
    for fn in (svd, zeropad):
        with pytest.raises(ValueError, match="target rank"):
            fn([a, b], [0.5, 0.5], rank=0, alpha=4.0)
        with pytest.raises(ValueError, match="alpha"):
            fn([a, b], [0.5, 0.5], rank=2, alpha=float("nan"))


def test_dtypes_are_widened_to_float32_and_float64_is_kept():
    gen = torch.Generator().manual_seed(10)
    half = [make_adapter(gen, 2, dtype=torch.float16), make_adapter(gen, 2, dtype=torch.bfloat16)]
    for out in (gossip(half, [0.5, 0.5]), stack(half, [0.5, 0.5]), svd(half, [0.5, 0.5], 2, 4.0)):
        assert out.factors["layer.0.q"].A.dtype == torch.float32
        assert out.dense["classifier.weight"].dtype == torch.float32
    double = [make_adapter(gen, 2, dtype=torch.float64), make_adapter(gen, 2)]
    assert svd(double, [0.5, 0.5], 2, 4.0).factors["layer.0.q"].B.dtype == torch.float64


# --- weights and metrics ----------------------------------------------------------------------------------------


def test_data_share_weights():
    assert data_share_weights([1, 3]) == [0.25, 0.75]
    assert math.isclose(sum(data_share_weights([7, 11, 13, 0])), 1.0, abs_tol=1e-12)
    for bad in ([], [0, 0], [1, -1], [float("inf"), 1]):
        with pytest.raises(ValueError):
            data_share_weights(bad)


def dense_consensus_distance(adapters) -> float:
    n = len(adapters)
    total = 0.0
    for key in adapters[0].factors:
        P = torch.stack([a.factors[key].to(torch.float64).product() for a in adapters])
        total += float(((P - P.mean(0)) ** 2).sum())
    for name in adapters[0].dense:
        D = torch.stack([a.dense[name].double() for a in adapters])
        total += float(((D - D.mean(0)) ** 2).sum())
    return total / n


@FAST
@given(mix=mixes, rslora=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_consensus_distance_matches_dense_computation(mix, rslora, seed):
    gen = torch.Generator().manual_seed(seed)
    adapters = [make_adapter(gen, r, alpha, rslora) for r, alpha in mix]
    ref = dense_consensus_distance(adapters)
    assert math.isclose(consensus_distance(adapters), ref, rel_tol=1e-9, abs_tol=1e-9)


def test_consensus_distance_is_zero_for_identical_adapters():
    gen = torch.Generator().manual_seed(11)
    a = make_adapter(gen, 4, alpha=32.0)
    scale = dense_consensus_distance([a, make_adapter(gen, 4, alpha=32.0)])
    assert consensus_distance([a, a.clone(), a.clone()]) <= 1e-12 * scale
    assert consensus_distance([a]) == 0.0
    # same product, different factorization (B c, A / c): still 0
    b = Adapter({k: LoraFactor(f.A / 2, f.B * 2, f.alpha) for k, f in a.factors.items()}, a.dense)
    assert consensus_distance([a, b]) <= 1e-12 * scale


@FAST
@given(n=st.integers(1, 4), r=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_factor_averaging_error_matches_dense_computation(n, r, seed):
    gen = torch.Generator().manual_seed(seed)
    adapters = [make_adapter(gen, r, alpha=8.0) for _ in range(n)]
    w = random_weights(gen, n)
    g = gossip(adapters, w).to(torch.float64)
    ref = exact_sum(adapters, w)
    num = sum(float(torch.linalg.norm(g.factors[k].product() - ref[k]) ** 2) for k in ref)
    den = sum(float(torch.linalg.norm(ref[k]) ** 2) for k in ref)
    expected = math.sqrt(num / den)
    # abs_tol: the Gram route subtracts inner products in float64, so its floor is ~sqrt(1e-16) relative
    assert math.isclose(factor_averaging_error(adapters, w), expected, rel_tol=1e-6, abs_tol=1e-7)
    if n == 1:
        assert factor_averaging_error(adapters, w) < 1e-7


def test_factor_averaging_error_shrinks_as_peers_agree():
    gen = torch.Generator().manual_seed(12)
    base = make_adapter(gen, 4)
    errs = []
    for spread in (1.0, 0.1, 0.01):
        peers = [Adapter({k: LoraFactor(f.A + spread * torch.randn(f.A.shape, generator=gen),
                                        f.B + spread * torch.randn(f.B.shape, generator=gen), f.alpha)
                          for k, f in base.factors.items()}, base.dense) for _ in range(4)]
        errs.append(factor_averaging_error(peers, [0.25] * 4))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3


@pytest.mark.parametrize("mode", ALL_MODES)
def test_modes_leave_their_inputs_untouched(mode):
    gen = torch.Generator().manual_seed(13)
    adapters = [make_adapter(gen, 3), make_adapter(gen, 3)]
    before = [a.clone() for a in adapters]
    mode(adapters, [0.4, 0.6])
    for a, b in zip(adapters, before):
        for key in a.factors:
            assert torch.equal(a.factors[key].A, b.factors[key].A) and torch.equal(a.factors[key].B, b.factors[key].B)
        assert torch.equal(a.dense["classifier.weight"], b.dense["classifier.weight"])

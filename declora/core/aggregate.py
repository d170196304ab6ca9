"""The aggregation modes of DESIGN.md section 1, as pure functions over `Adapter`s.

Every mode takes the adapters to mix (a peer and its neighbours, or all clients behind a server) and one row of
non-negative weights that sums to 1, and averages the dense tensors with those same weights:

- `gossip`   Dec-LoRA / FedIT: average A and B separately (cheap, not exact; equal ranks).
- `stack`    FLoRA: stacked factors whose product is exactly sum_j m_j s_j B_j A_j (any ranks); `merged_delta`
             turns it into the dense per-module delta to merge into the base weights.
- `svd`      the same exact sum re-factorized to a target rank through QR of the stacked factors and an SVD of
             the small core, never forming an (out x in) matrix.
- `zeropad`  HetLoRA baseline: zero-pad to the largest rank, average A and B, truncate.

Plus `data_share_weights` (the server's weights), `consensus_distance`, `product_distances` and
`factor_averaging_error` (metrics).

Pure torch: no peft, transformers or zmq here. Bad input raises ValueError naming the module key.
Results are computed and returned in float32 (float64 if any input is float64) on the first adapter's device.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from declora.core.factors import Adapter, LoraFactor, scaling_for

WEIGHT_SUM_TOL = 1e-6

__all__ = ["check_weights", "consensus_distance", "data_share_weights", "factor_averaging_error", "gossip",
           "merged_delta", "product_distances", "stack", "svd", "zeropad"]


# ---------------------------------------------------------------------------------------------------------------
# Validation


def check_weights(weights: Sequence[float], n: int) -> list[float]:
    """The weights as floats, or ValueError unless there are n of them, all finite and >= 0, summing to 1."""
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"got {len(w)} weights for {n} adapters")
    for j, x in enumerate(w):
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"weight {j} is {x}: weights must be finite and >= 0")
    total = math.fsum(w)
    if abs(total - 1.0) > WEIGHT_SUM_TOL:
        raise ValueError(f"weights sum to {total!r}, not 1 (tolerance {WEIGHT_SUM_TOL})")
    return w


def _check_finite(t: torch.Tensor, what: str) -> None:
    # A full isfinite() pass allocates a mask and is much slower than a sum; any NaN or Inf makes the sum
    # non-finite, so only a non-finite sum (a bad value, or a finite overflow) pays for the exact check.
    if not torch.isfinite(t.sum()) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or Inf")


def _check_float(t: torch.Tensor, what: str) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{what} has dtype {t.dtype}, expected a floating-point tensor")


def _missing_key(keys: list[set[str]], kind: str) -> None:
    """ValueError naming the first key that is not in every adapter."""
    union = set().union(*keys)
    for key in sorted(union):
        absent = [j for j, ks in enumerate(keys) if key not in ks]
        if absent:
            present = next(j for j, ks in enumerate(keys) if key in ks)
            raise ValueError(f"{kind} {key!r} is in adapter {present} but missing from adapter(s) {absent}")


def _check_adapters(adapters: Sequence[Adapter], *, equal_ranks: bool = False) -> list[str]:
    """Validate that the adapters can be mixed; return the sorted module keys.

    equal_ranks: also require equal rank, alpha and rsLoRA per module (what averaging A and B separately needs).
    """
    if len(adapters) == 0:
        raise ValueError("no adapters to aggregate")
    for j, a in enumerate(adapters):
        if not isinstance(a, Adapter):
            raise ValueError(f"adapter {j} is a {type(a).__name__}, not an Adapter")
        if not a.factors and not a.dense:
            raise ValueError(f"adapter {j} is empty: no LoRA factors and no dense tensors")
    _missing_key([set(a.factors) for a in adapters], "module")
    _missing_key([set(a.dense) for a in adapters], "dense tensor")

    keys = sorted(adapters[0].factors)
    for key in keys:
        _check_module(key, [a.factors[key] for a in adapters], equal_ranks)
    for name in sorted(adapters[0].dense):
        shape0 = tuple(adapters[0].dense[name].shape)
        for j, a in enumerate(adapters):
            t = a.dense[name]
            _check_float(t, f"dense tensor {name!r} of adapter {j}")
            if tuple(t.shape) != shape0:
                raise ValueError(
                    f"dense tensor {name!r}: adapter {j} has shape {tuple(t.shape)}, adapter 0 has {shape0}"
                )
            _check_finite(t, f"dense tensor {name!r} of adapter {j}")
    return keys


def _check_module(key: str, fs: list[LoraFactor], equal_ranks: bool) -> None:
    f0 = fs[0]
    for j, f in enumerate(fs):
        where = f"module {key!r} of adapter {j}"
        if f.out_features != f0.out_features or f.in_features != f0.in_features:
            raise ValueError(
                f"module {key!r}: adapter {j} is (out, in) = ({f.out_features}, {f.in_features}), "
                f"adapter 0 is ({f0.out_features}, {f0.in_features})"
            )
        if f.r < 1:
            raise ValueError(f"{where} has rank 0")
        if not (math.isfinite(f.alpha) and f.alpha > 0):
            raise ValueError(f"{where} has alpha {f.alpha}: must be finite and > 0")
        if equal_ranks:
            if f.r != f0.r:
                raise ValueError(f"module {key!r}: rank mismatch, adapter {j} has r={f.r}, adapter 0 has r={f0.r}")
            if f.rslora != f0.rslora or not math.isclose(f.alpha, f0.alpha, rel_tol=1e-9):
                raise ValueError(
                    f"module {key!r}: scaling mismatch, adapter {j} has alpha={f.alpha} rslora={f.rslora}, "
                    f"adapter 0 has alpha={f0.alpha} rslora={f0.rslora}"
                )
        _check_float(f.A, f"A of {where}")
        _check_float(f.B, f"B of {where}")
        _check_finite(f.A, f"A of {where}")
        _check_finite(f.B, f"B of {where}")


def _target_rank(rank: int | Mapping[str, int], key: str) -> int:
    if isinstance(rank, Mapping):
        if key not in rank:
            raise ValueError(f"module {key!r}: no target rank given")
        r = rank[key]
    else:
        r = rank
    if int(r) != r or r < 1:
        raise ValueError(f"module {key!r}: target rank must be a positive integer, got {r!r}")
    return int(r)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"target alpha must be finite and > 0, got {alpha}")
    return alpha


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces


def _work_dtype(adapters: Sequence[Adapter]) -> torch.dtype:
    """float32, or float64 if any input is: fp16/bf16 (decoded wire formats) are widened before any arithmetic."""
    tensors = [t for a in adapters for f in a.factors.values() for t in (f.A, f.B)]
    tensors += [t for a in adapters for t in a.dense.values()]
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _device(adapters: Sequence[Adapter]) -> torch.device:
    a0 = adapters[0]
    t = next(iter(a0.factors.values())).A if a0.factors else next(iter(a0.dense.values()))
    return t.device


def _weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float], dtype, device) -> torch.Tensor:
    """sum_j w_j t_j, accumulated in order (gossip and zeropad share it, so equal inputs give equal bits)."""
    acc = torch.zeros(tensors[0].shape, dtype=dtype, device=device)
    for t, w in zip(tensors, weights):
        acc.add_(t.to(device=device, dtype=dtype), alpha=w)
    return acc


def _average_dense(adapters: Sequence[Adapter], weights: Sequence[float], dtype, device) -> dict[str, torch.Tensor]:
    return {
        name: _weighted_sum([a.dense[name] for a in adapters], weights, dtype, device)
        for name in sorted(adapters[0].dense)
    }


def _stacked_A(fs: Sequence[LoraFactor], weights: Sequence[float], dtype, device) -> torch.Tensor:
    """FLoRA's A_s = [m_1 s_1 A_1 ; ... ; m_n s_n A_n], (R, in) with R = sum r_j, row-major (so A_s.T = A_Ri.mT is
    column-major, the layout LAPACK's QR works in). Scaled in place after the one copy that cat makes."""
    A_Ri = torch.cat([f.A.to(device=device, dtype=dtype) for f in fs], dim=0)
    row_scale = [m * f.scaling for f, m in zip(fs, weights) for _ in range(f.r)]
    return A_Ri.mul_(torch.tensor(row_scale, dtype=dtype, device=device)[:, None])


def _stacked_Bt(fs: Sequence[LoraFactor], dtype, device) -> torch.Tensor:
    """FLoRA's B_s = [B_1 ... B_n] (out, R), returned transposed: Bt_Ro (R, out) row-major, so B_s = Bt_Ro.mT is
    column-major for the QR, and B_s @ A_s = sum_j m_j s_j B_j A_j exactly."""
    return torch.cat([f.B.to(device=device, dtype=dtype).T for f in fs], dim=0)


# ---------------------------------------------------------------------------------------------------------------
# Modes


def gossip(adapters: Sequence[Adapter], weights: Sequence[float]) -> Adapter:
    """Dec-LoRA: A <- sum_j m_j A_j and B <- sum_j m_j B_j per module. Ranks, alphas and rsLoRA must match."""
    keys = _check_adapters(adapters, equal_ranks=True)
    w = check_weights(weights, len(adapters))
    dtype, device = _work_dtype(adapters), _device(adapters)
    factors = {}
    for key in keys:
        fs = [a.factors[key] for a in adapters]
        A_ri = _weighted_sum([f.A for f in fs], w, dtype, device)
        B_or = _weighted_sum([f.B for f in fs], w, dtype, device)
        factors[key] = LoraFactor(A_ri, B_or, fs[0].alpha, fs[0].rslora)
    return Adapter(factors, _average_dense(adapters, w, dtype, device))


def stack(adapters: Sequence[Adapter], weights: Sequence[float]) -> Adapter:
    """FLoRA: per module B_s = [B_j ...] (out, R), A_s = [m_j s_j A_j ; ...] (R, in), R = sum_j r_j.

    Each returned factor has alpha = R and rslora False, i.e. scaling exactly 1, so its product
    (`LoraFactor.product()`, `merged_delta`) is sum_j m_j s_j B_j A_j for any mix of ranks and scalings.
    Every adapter keeps its slot even at weight 0, so R (the shape) does not depend on the weights, as in peft.
    """
    keys = _check_adapters(adapters)
    w = check_weights(weights, len(adapters))
    dtype, device = _work_dtype(adapters), _device(adapters)
    factors = {}
    for key in keys:
        fs = [a.factors[key] for a in adapters]
        A_Ri = _stacked_A(fs, w, dtype, device)
        B_oR = torch.cat([f.B.to(device=device, dtype=dtype) for f in fs], dim=1)
        factors[key] = LoraFactor(A_Ri, B_oR, float(A_Ri.shape[0]), False)
    return Adapter(factors, _average_dense(adapters, w, dtype, device))


def merged_delta(adapter: Adapter) -> dict[str, torch.Tensor]:
    """Dense per-module delta `scaling * B @ A`, shape (out, in), to add to the base weights (e.g. after `stack`)."""
    for key in sorted(adapter.factors):
        f = adapter.factors[key]
        _check_finite(f.A, f"A of module {key!r}")
        _check_finite(f.B, f"B of module {key!r}")
    # Scale the smaller factor (A has r rows) rather than the (out, in) result.
    return {key: f.B @ (f.A * f.scaling) for key, f in sorted(adapter.factors.items())}


def svd(
    adapters: Sequence[Adapter],
    weights: Sequence[float],
    rank: int | Mapping[str, int],
    alpha: float,
    rslora: bool = False,
) -> Adapter:
    """The exact weighted sum of products, re-factorized to the target rank (FlexLoRA / exact product gossip).

    Per module, with the stacked factors B_s (out, R), A_s (R, in) of `stack`:
    QB, RB = qr(B_s); QA, RA = qr(A_s.T); U, S, Vt = svd(RB @ RA.T); keep the top r; then
    B = QB @ U_r @ sqrt(S_r / s) and A = sqrt(S_r / s) @ Vt_r @ QA.T with s = scaling_for(alpha, r, rslora),
    so that s * B @ A is the best rank-r approximation of sum_j m_j s_j B_j A_j (exact when R <= r). The
    singular values are split evenly between B and A so both factors have the same scale. When fewer than r
    singular values exist, the factors are padded with zero columns/rows to exactly rank r.

    Cost per module O((out + in) R^2 + R^3); no (out x in) matrix is ever formed.
    `rank` is one target rank, or a dict module key -> rank (a peer's own ranks).
    """
    keys = _check_adapters(adapters)
    w = check_weights(weights, len(adapters))
    alpha = _check_alpha(alpha)
    dtype, device = _work_dtype(adapters), _device(adapters)
    factors = {}
    for key in keys:
        r = _target_rank(rank, key)
        fs = [a.factors[key] for a in adapters]
        A_ri, B_or = _refactorize(_stacked_Bt(fs, dtype, device), _stacked_A(fs, w, dtype, device), r,
                                  scaling_for(alpha, r, rslora))
        factors[key] = LoraFactor(A_ri, B_or, alpha, rslora)
    return Adapter(factors, _average_dense(adapters, w, dtype, device))


def _refactorize(Bt_Ro: torch.Tensor, A_Ri: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_ri, B_or) with scaling * B_or @ A_ri = best rank-r approximation of Bt_Ro.T @ A_Ri.

    float32 is enough here: Householder QR is backward stable whatever the conditioning of the stacked factors
    (and they are nearly rank-deficient exactly when peers agree, which would break a Gram/Cholesky shortcut),
    so the result is accurate to a few fp32 ulps of ||sum||, below any training noise; float64 would double the
    time and memory for nothing. The QRs use geqrf + ormqr: Q is applied to the r kept vectors instead of being
    formed (orgqr), which saves about a third of the work.
    """
    out, inn = Bt_Ro.shape[1], A_Ri.shape[1]
    hB, tauB = torch.geqrf(Bt_Ro.mT)  # B_s = QB RB, QB (out, KB), RB (KB, R)
    hA, tauA = torch.geqrf(A_Ri.mT)  # A_s.T = QA RA, QA (in, KA), RA (KA, R)
    RB = torch.triu(hB[: tauB.shape[0]])
    RA = torch.triu(hA[: tauA.shape[0]])
    U, S, Vh = torch.linalg.svd(RB @ RA.mT, full_matrices=False)  # core (KB, KA)
    keep = min(r, S.shape[0])
    root = torch.sqrt(S[:keep] / scaling)
    B_or = _apply_q(hB, tauB, U[:, :keep] * root)  # QB @ U_r sqrt(S_r / s): (out, keep)
    A_ir = _apply_q(hA, tauA, Vh[:keep].mT * root)  # QA @ Vt_r.T sqrt(S_r / s): (in, keep)
    if keep < r:  # fewer singular values than the target rank: pad with zero rank slots
        B_or = torch.cat([B_or, B_or.new_zeros(out, r - keep)], dim=1)
        A_ir = torch.cat([A_ir, A_ir.new_zeros(inn, r - keep)], dim=1)
    return A_ir.T.contiguous(), B_or.contiguous()


def _apply_q(h: torch.Tensor, tau: torch.Tensor, X_Kr: torch.Tensor) -> torch.Tensor:
    """Q @ X for the reduced Q (m, K) that geqrf encoded in (h, tau); ormqr wants X padded to m rows."""
    m, K = h.shape[0], tau.shape[0]
    X_mr = X_Kr.new_zeros(m, X_Kr.shape[1])
    X_mr[:K] = X_Kr
    return torch.ormqr(h, tau, X_mr)


def zeropad(
    adapters: Sequence[Adapter],
    weights: Sequence[float],
    rank: int | Mapping[str, int],
    alpha: float,
    rslora: bool = False,
) -> Adapter:
    """HetLoRA baseline: zero-pad every A (rows) and B (columns) to the largest rank, average A and B separately,
    and keep the first r rank slots (padding further with zeros if r is larger than every input rank).

    Different scalings: each adapter's scaling relative to the target, s_j / s, is folded into its B before
    averaging, so every term is expressed at the target scaling (A, the input projection, is left as it is).
    With equal ranks and alphas equal to the target, s_j / s == 1 exactly and this is bit-for-bit `gossip`.
    """
    keys = _check_adapters(adapters)
    w = check_weights(weights, len(adapters))
    alpha = _check_alpha(alpha)
    dtype, device = _work_dtype(adapters), _device(adapters)
    factors = {}
    for key in keys:
        r = _target_rank(rank, key)
        s = scaling_for(alpha, r, rslora)
        fs = [a.factors[key] for a in adapters]
        # Truncating after padding = keeping the first min(r_j, r) slots of each adapter, padded to r.
        As = [_pad_rows(f.A[:r].to(device=device, dtype=dtype), r) for f in fs]
        Bs = [_pad_rows(f.B[:, :r].to(device=device, dtype=dtype).T, r).T for f in fs]  # widen before scaling
        Bs = [B if f.scaling == s else B * (f.scaling / s) for B, f in zip(Bs, fs)]
        A_ri, B_or = _weighted_sum(As, w, dtype, device), _weighted_sum(Bs, w, dtype, device)
        factors[key] = LoraFactor(A_ri, B_or, alpha, rslora)
    return Adapter(factors, _average_dense(adapters, w, dtype, device))


def _pad_rows(X: torch.Tensor, rows: int) -> torch.Tensor:
    if X.shape[0] == rows:
        return X
    return torch.cat([X, X.new_zeros(rows - X.shape[0], X.shape[1])], dim=0)


def data_share_weights(sample_counts: Sequence[int | float]) -> list[float]:
    """The server's weights p_k = n_k / sum n (FedAvg / FLoRA / FlexLoRA): counts >= 0 with a positive sum."""
    counts = [float(n) for n in sample_counts]
    if not counts:
        raise ValueError("no sample counts")
    for k, n in enumerate(counts):
        if not math.isfinite(n) or n < 0:
            raise ValueError(f"sample count {k} is {n}: counts must be finite and >= 0")
    total = math.fsum(counts)
    if total <= 0:
        raise ValueError("sample counts sum to 0")
    return [n / total for n in counts]


# ---------------------------------------------------------------------------------------------------------------
# Metrics
#
# Both work on Gram matrices of the stacked factors: for X = B @ A (B (out, R), A (R, in)),
# ||X||_F^2 = trace(A^T B^T B A) = sum((B^T B) * (A A^T)), and the (i, j) block of that elementwise product sums
# to <B_i A_i, B_j A_j>. That is O((out + in) R^2), never (out x in). The Grams are taken in float64 because the
# distances are small differences of large inner products: fp32 would drown them once peers nearly agree.


def _gram_products(Bt_Ro: torch.Tensor, A_Ri: torch.Tensor) -> torch.Tensor:
    """H_RR with H[a, b] = (B^T B)[a, b] * (A A^T)[a, b]; block sums of H are inner products of the products."""
    Bt = Bt_Ro.to(torch.float64)
    A = A_Ri.to(torch.float64)
    return (Bt @ Bt.T) * (A @ A.T)


def _owner_sums(H_RR: torch.Tensor, ranks: list[int], device) -> torch.Tensor:
    """Block sums of H per pair of adapters (slot a belongs to the adapter whose rank block holds it)."""
    owner_R = torch.repeat_interleave(torch.arange(len(ranks), device=device), torch.tensor(ranks, device=device))
    onehot_Rn = torch.nn.functional.one_hot(owner_R, len(ranks)).to(torch.float64)
    return onehot_Rn.T @ H_RR @ onehot_Rn


def consensus_distance(adapters: Sequence[Adapter]) -> float:
    """(1/n) sum_i ||P_i - P_mean||^2, P_i = peer i's products scaling * B @ A over all modules plus its dense
    tensors. 0 for identical adapters; any mix of ranks and scalings. No (out x in) matrix is formed."""
    keys = _check_adapters(adapters)
    n = len(adapters)
    device = _device(adapters)
    total = 0.0
    for key in keys:
        fs = [a.factors[key] for a in adapters]
        H_RR = _gram_products(_stacked_Bt(fs, torch.float64, device), _stacked_A(fs, [1.0] * n, torch.float64, device))
        G_nn = _owner_sums(H_RR, [f.r for f in fs], device)  # G[i, j] = <P_i, P_j>
        # sum_i ||P_i - mean||^2 = trace(G) - sum(G) / n
        total += float(torch.trace(G_nn) - G_nn.sum() / n)
    for name in sorted(adapters[0].dense):
        D = torch.stack([a.dense[name].to(device=device, dtype=torch.float64) for a in adapters])
        total += float(((D - D.mean(dim=0)) ** 2).sum())
    return max(total, 0.0) / n  # rounding can leave a tiny negative when all agree


def product_distances(mine: Adapter, others: Sequence[Adapter]) -> list[float]:
    """|| P_j - P_i ||_F, P = the products s B A of all modules and the dense tensors, any ranks, no (out x in) matrix."""
    adapters = [mine, *others]
    _check_adapters(adapters)
    n, device = len(adapters), _device(adapters)
    d2 = torch.zeros(n, dtype=torch.float64, device=device)
    for key in sorted(mine.factors):
        fs = [a.factors[key] for a in adapters]
        H_RR = _gram_products(_stacked_Bt(fs, torch.float64, device), _stacked_A(fs, [1.0] * n, torch.float64, device))
        G_nn = _owner_sums(H_RR, [f.r for f in fs], device)  # G[i, j] = <P_i, P_j>
        d2 += torch.diagonal(G_nn) + G_nn[0, 0] - 2 * G_nn[0]
    for name in sorted(mine.dense):
        D = torch.stack([a.dense[name].to(device=device, dtype=torch.float64).reshape(-1) for a in adapters])
        d2 += (D - D[0]).pow(2).sum(dim=1)
    return [math.sqrt(max(float(v), 0.0)) if math.isfinite(float(v)) else math.inf for v in d2[1:]]


def factor_averaging_error(adapters: Sequence[Adapter], weights: Sequence[float]) -> float:
    """Relative Frobenius error of gossip's product against the exact weighted sum of products, over all modules:

    || s avg(B) avg(A) - sum_j m_j s_j B_j A_j ||_F / || sum_j m_j s_j B_j A_j ||_F

    (dense tensors are averaged identically by both, so they are left out). Needs gossip-compatible adapters.
    0.0 when the exact sum is 0 and so is gossip's product.
    """
    keys = _check_adapters(adapters, equal_ranks=True)
    w = check_weights(weights, len(adapters))
    device = _device(adapters)
    err2 = ref2 = 0.0
    for key in keys:
        fs = [a.factors[key] for a in adapters]
        r = fs[0].r
        A_bar = _weighted_sum([f.A for f in fs], w, torch.float64, device) * fs[0].scaling
        B_bar = _weighted_sum([f.B for f in fs], w, torch.float64, device)
        Bt_Ro, A_Ri = _stacked_Bt(fs, torch.float64, device), _stacked_A(fs, w, torch.float64, device)
        # difference = [B_bar, B_s] @ [s A_bar ; -A_s]: one low-rank product of rank r + R
        H = _gram_products(torch.cat([B_bar.T, Bt_Ro]), torch.cat([A_bar, -A_Ri]))
        err2 += float(H.sum())
        ref2 += float(H[r:, r:].sum())
    err2 = max(err2, 0.0)
    if ref2 <= 0.0:
        return 0.0 if err2 == 0.0 else math.inf
    return math.sqrt(err2 / ref2)

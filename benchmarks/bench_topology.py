"""Consensus speed of gossip on ring, torus, exp and complete graphs against the rate the spectral gap predicts.

No training: every one of N peers (default 16) gets a synthetic adapter (a shared Gaussian part plus a per-peer
Gaussian offset, so peers disagree), then R rounds (default 30) mix the whole network in one process, each peer i
calling declora.core.aggregate on its neighbourhood with row i of the mixing matrix M, exactly as a peer does. Float64
throughout, so the rates can be followed far down.

Per round and graph it records:
- the factor disagreement D_t = sum_i ||A_i - mean A||^2 + ||B_i - mean B||^2 under `gossip` (linear in the
  factors, so D_{t+1} <= lambda_2(M)^2 D_t each round, lambda_2 the eigenvalue of second largest magnitude);
  every gossip round is also checked against the matrix form A <- M A over the stacked factors;
- declora.core.aggregate.consensus_distance of the products under `gossip` and under `svd` (exact product mixing
  re-factorized to the same rank);
- how far the network's mean product has moved from the mean of the initial products (what a server would
  compute): gossip's fixed point is s * mean(B) @ mean(A), not mean(s * B @ A).

Reported per graph: spectral gap, predicted contraction |lambda_2|^2, measured contraction (geometric mean of the
per-round ratios of D_t, i.e. (D_T / D_0)^(1/T), over the rounds before D_t reaches the float64 floor), the worst
single round, and whether measured <= predicted (1e-6 slack).

    python benchmarks/bench_topology.py [--rounds 30] [--n 16] [--mixing metropolis] [--graphs ring:16 ...]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/bench_topology.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import RESULTS, pyplot, write_result
from declora.core.aggregate import consensus_distance, gossip, svd
from declora.core.factors import Adapter, LoraFactor
from declora.core.mixing import MIXING_RULES, mixing_matrix, mixing_row, spectral_gap
from declora.core.topology_files import load_topology

SLACK = 1e-6  # measured <= predicted + SLACK counts as "bound holds"
# Below these fractions of the initial value a metric is float64 rounding, not consensus: ratios past them are
# not counted. The factor disagreement is a direct sum of squares (rounding ~1e-32 relative); consensus_distance is
# trace(G) - sum(G)/n over Gram matrices, a difference of large numbers (rounding ~1e-16 relative).
FACTOR_FLOOR = 1e-24
PRODUCT_FLOOR = 1e-12
PLOT_FLOOR = 1e-30  # log plots clip here (the complete graph reaches consensus in one round)
MATRIX_FORM_TOL = 1e-12  # aggregate.gossip vs M @ stacked factors: only summation order differs


def default_graphs(n: int) -> list[str]:
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)  # the squarest torus with n nodes
    graphs = [f"ring:{n}"]
    if rows >= 2:
        graphs.append(f"torus:{rows}x{n // rows}")
    return graphs + [f"exp:{n}", f"complete:{n}"]


def synthetic_adapters(n: int, modules: int, dim: int, rank: int, alpha: float, spread: float, seed: int) -> list[Adapter]:
    """n float64 adapters: per module A = A0 + spread * E_i (r, dim) and B = B0 + spread * F_i (dim, r), all
    entries Gaussian, scaled so that every product s * B @ A has entries of order 1 / sqrt(dim)."""
    gen = torch.Generator().manual_seed(seed)

    def gauss(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    keys = [f"layers.{m}.proj" for m in range(modules)]
    shared = {k: (gauss(rank, dim) / dim**0.5, gauss(dim, rank) / rank**0.5 / (alpha / rank)) for k in keys}
    adapters = []
    for _ in range(n):
        factors = {}
        for k, (A0, B0) in shared.items():
            A = A0 + spread * gauss(rank, dim) / dim**0.5
            B = B0 + spread * gauss(dim, rank) / rank**0.5 / (alpha / rank)
            factors[k] = LoraFactor(A, B, alpha)
        adapters.append(Adapter(factors))
    return adapters


def stacked_factors(adapters: list[Adapter]):
    """(key, "A" or "B", that factor of every peer stacked along a new first dimension), for every module."""
    for key in adapters[0].keys():
        for role in ("A", "B"):
            yield key, role, torch.stack([getattr(a.factors[key], role) for a in adapters])


def factor_disagreement(adapters: list[Adapter]) -> float:
    """sum_i ||A_i - mean A||^2 + ||B_i - mean B||^2, summed over modules."""
    return sum(float(((X - X.mean(dim=0)) ** 2).sum()) for _, _, X in stacked_factors(adapters))


def mean_products(adapters: list[Adapter]) -> dict[str, torch.Tensor]:
    """Per module (1/n) sum_i s_i B_i @ A_i, one (dim x dim) matmul over the concatenated factors."""
    n = len(adapters)
    out = {}
    for key in adapters[0].keys():
        fs = [a.factors[key] for a in adapters]
        B_cat = torch.cat([f.B for f in fs], dim=1)
        A_cat = torch.cat([f.A * (f.scaling / n) for f in fs], dim=0)
        out[key] = B_cat @ A_cat
    return out


def relative_distance(x: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    num = sum(float(((x[k] - ref[k]) ** 2).sum()) for k in ref)
    den = sum(float((ref[k] ** 2).sum()) for k in ref)
    return math.sqrt(num / den)


def dense_consensus_distance(adapters: list[Adapter]) -> float:
    """consensus_distance computed the obvious way (dense products), to validate the Gram-based metric."""
    total = 0.0
    for key in adapters[0].keys():
        P = torch.stack([a.factors[key].product() for a in adapters])
        total += float(((P - P.mean(dim=0)) ** 2).sum())
    return total / len(adapters)


def mix_round(adapters: list[Adapter], M: np.ndarray, mode: str, rank: int, alpha: float) -> list[Adapter]:
    """One synchronous round: every peer mixes its neighbourhood (itself included) with its row of M."""
    mixed = []
    for i in range(len(adapters)):
        row = mixing_row(M, i)
        group = [adapters[j] for j in row]
        weights = list(row.values())
        if mode == "gossip":
            mixed.append(gossip(group, weights))
        else:
            mixed.append(svd(group, weights, rank=rank, alpha=alpha))
    return mixed


def matrix_form_error(before: list[Adapter], after: list[Adapter], M: np.ndarray) -> float:
    """max |gossip result - M @ stacked factors| over all modules, relative to the largest entry."""
    M_t = torch.from_numpy(M)
    worst = 0.0
    for (_, _, X), (_, _, Y) in zip(stacked_factors(before), stacked_factors(after)):
        expected = torch.einsum("ij,j...->i...", M_t, X)
        worst = max(worst, float((Y - expected).abs().max() / X.abs().max()))
    return worst


def contraction(series: list[float], floor: float) -> tuple[float, int]:
    """Geometric mean of the per-round ratios while the series is above floor * series[0]:
    (x_T / x_0)^(1/T), T the first round at or below the floor (or the last round). Returns (rate, T)."""
    x0 = series[0]
    T = next((t for t in range(1, len(series)) if series[t] <= floor * x0), len(series) - 1)
    if T == 0:
        return math.nan, 0
    return (max(series[T], 0.0) / x0) ** (1.0 / T), T


def round_ratios(series: list[float], floor: float) -> list[float]:
    """x_{t+1} / x_t for every round that starts above floor * x_0."""
    x0 = series[0]
    return [series[t + 1] / series[t] for t in range(len(series) - 1) if series[t] > floor * x0]


def run_graph(spec: str, rule: str, start: list[Adapter], rounds: int, rank: int, alpha: float) -> dict:
    topo = load_topology(spec)
    M = mixing_matrix(topo.graph, rule)
    gap = spectral_gap(M)
    lam2 = 1.0 - gap
    predicted = lam2**2

    t0 = time.perf_counter()
    reference = mean_products(start)  # what a server averaging products would hold
    g, s = start, start
    factor = [factor_disagreement(g)]
    cons_g = [consensus_distance(g)]
    cons_s = [cons_g[0]]
    drift_g, drift_s = [0.0], [0.0]
    form_err = 0.0
    for _ in range(rounds):
        g_next = mix_round(g, M, "gossip", rank, alpha)
        form_err = max(form_err, matrix_form_error(g, g_next, M))
        g = g_next
        s = mix_round(s, M, "svd", rank, alpha)
        factor.append(factor_disagreement(g))
        cons_g.append(consensus_distance(g))
        cons_s.append(consensus_distance(s))
        drift_g.append(relative_distance(mean_products(g), reference))
        drift_s.append(relative_distance(mean_products(s), reference))
    seconds = time.perf_counter() - t0
    if form_err > MATRIX_FORM_TOL:
        raise AssertionError(f"{spec}: aggregate.gossip differs from M @ factors by {form_err:.3g} (relative)")

    measured, T = contraction(factor, FACTOR_FLOOR)
    ratios = round_ratios(factor, FACTOR_FLOOR)
    tail = ratios[-max(1, len(ratios) // 3):]
    prod_g, _ = contraction(cons_g, PRODUCT_FLOOR)
    prod_s, _ = contraction(cons_s, PRODUCT_FLOOR)
    degrees = topo.degrees
    return {
        "graph": spec,
        "n": topo.n,
        "edges": len(topo.edges),
        "degree_min": min(degrees),
        "degree_max": max(degrees),
        "mixing": rule,
        "lambda2_abs": lam2,
        "spectral_gap": gap,
        "predicted_contraction": predicted,
        "measured_contraction": measured,
        "rounds_measured": T,
        "max_round_ratio": max(ratios),
        "tail_contraction": math.exp(sum(math.log(r) for r in tail) / len(tail)) if all(r > 0 for r in tail) else 0.0,
        "bound_holds": bool(measured <= predicted + SLACK),
        "every_round_within_bound": bool(max(ratios) <= predicted + SLACK),
        "product_contraction_gossip": prod_g,
        "product_contraction_svd": prod_s,
        "final_factor_disagreement_rel": factor[-1] / factor[0],
        "final_consensus_gossip_rel": cons_g[-1] / cons_g[0],
        "final_consensus_svd_rel": cons_s[-1] / cons_s[0],
        "final_mean_drift_gossip": drift_g[-1],
        "final_mean_drift_svd": drift_s[-1],
        "gossip_vs_matrix_form_max_rel_err": form_err,
        "seconds": seconds,
        "series": {
            "factor_disagreement": factor,
            "predicted_factor_disagreement": [factor[0] * predicted**t for t in range(rounds + 1)],
            "consensus_distance_gossip": cons_g,
            "consensus_distance_svd": cons_s,
            "mean_product_drift_gossip": drift_g,
            "mean_product_drift_svd": drift_s,
        },
    }


def rank_floor(start: list[Adapter], rank: int) -> float:
    """||mean P - best rank-r approximation of it|| / ||mean P|| over all modules: the closest any rank-r consensus
    can come to the mean of the initial products."""
    num = den = 0.0
    for P in mean_products(start).values():
        sv2 = torch.linalg.svdvals(P) ** 2
        num += float(sv2[rank:].sum())
        den += float(sv2.sum())
    return math.sqrt(num / den)


def run(graphs: list[str], rule: str = "metropolis", rounds: int = 30, n: int = 16, modules: int = 4, dim: int = 256,
        rank: int = 8, alpha: float = 16.0, spread: float = 1.0, seed: int = 0) -> dict:
    """The whole benchmark, without printing or writing: the config, start-point checks and one row per graph."""
    start = synthetic_adapters(n, modules, dim, rank, alpha, spread, seed)
    gram, dense = consensus_distance(start), dense_consensus_distance(start)
    rows = []
    for spec in graphs:
        row = run_graph(spec, rule, start, rounds, rank, alpha)
        if row["n"] != n:
            raise ValueError(f"{spec} has {row['n']} nodes but the synthetic network has {n} peers")
        rows.append(row)
    return {
        "config": {"graphs": graphs, "mixing": rule, "rounds": rounds, "n": n, "modules": modules, "in": dim,
                   "out": dim, "rank": rank, "alpha": alpha, "spread": spread, "seed": seed, "dtype": "float64",
                   "svd_target_rank": rank, "slack": SLACK, "factor_floor": FACTOR_FLOOR,
                   "product_floor": PRODUCT_FLOOR},
        "start": {
            "factor_disagreement": factor_disagreement(start),
            "consensus_distance": gram,
            "consensus_distance_dense_check_rel_err": abs(gram - dense) / dense,
            "rank_floor_of_mean_product": rank_floor(start, rank),
        },
        "rows": rows,
    }


def table(rows: list[dict]) -> str:
    """Markdown table, one line per graph."""
    head = ("| graph | degree | spectral gap | predicted l2^2 | measured | worst round | tail | bound holds "
            "| product rate gossip | product rate svd | mean drift gossip | mean drift svd |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        deg = str(r["degree_min"]) if r["degree_min"] == r["degree_max"] else f"{r['degree_min']}-{r['degree_max']}"
        lines.append(
            f"| {r['graph']} | {deg} | {r['spectral_gap']:.4f} | {r['predicted_contraction']:.4g} "
            f"| {r['measured_contraction']:.4g} | {r['max_round_ratio']:.4g} | {r['tail_contraction']:.4g} "
            f"| {'yes' if r['bound_holds'] else 'NO'} | {r['product_contraction_gossip']:.4g} "
            f"| {r['product_contraction_svd']:.4g} | {r['final_mean_drift_gossip']:.3g} "
            f"| {r['final_mean_drift_svd']:.3g} |"
        )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    rows = result["rows"]
    rank_floor_value = result["start"]["rank_floor_of_mean_product"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def clip(values: list[float], ref: float) -> np.ndarray:
        v = np.asarray(values, dtype=float) / ref
        return np.where(v > PLOT_FLOOR, v, PLOT_FLOOR)

    for k, r in enumerate(rows):
        c = colors[k % len(colors)]
        s = r["series"]
        t = np.arange(len(s["factor_disagreement"]))
        pred = np.asarray(s["predicted_factor_disagreement"]) / s["factor_disagreement"][0]
        pred = np.where(pred > PLOT_FLOOR, pred, np.nan)  # a predicted 0 (complete graph) has no log
        label = f"{r['graph']} (|l2|={r['lambda2_abs']:.3f})"
        axes[0].semilogy(t, clip(s["factor_disagreement"], s["factor_disagreement"][0]), "-o", ms=3, color=c,
                         label=f"{label} measured")
        axes[0].semilogy(t, pred, "--", color=c, label=f"{r['graph']} |l2|^(2t)")
        c0 = s["consensus_distance_gossip"][0]
        axes[1].semilogy(t, clip(s["consensus_distance_gossip"], c0), "-o", ms=3, color=c, label=f"{r['graph']} gossip")
        axes[1].semilogy(t, clip(s["consensus_distance_svd"], c0), ":s", ms=3, color=c, label=f"{r['graph']} svd")
        axes[1].semilogy(t, pred, "--", color=c, lw=0.8)
        axes[2].plot(t, s["mean_product_drift_gossip"], "-o", ms=3, color=c, label=f"{r['graph']} gossip")
        axes[2].plot(t, s["mean_product_drift_svd"], ":s", ms=3, color=c, label=f"{r['graph']} svd")
    axes[2].axhline(rank_floor_value, color="gray", lw=1, label=f"best rank-{result['config']['rank']} approx.")
    cfg = result["config"]
    axes[0].set_title("factor disagreement (gossip), relative to round 0")
    axes[1].set_title("consensus distance of the products, relative\n(dashed: |l2|^(2t))")
    axes[2].set_title("||mean product - initial mean product|| / ||initial mean product||")
    for ax in axes:
        ax.set_xlabel("round")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylim(bottom=PLOT_FLOOR / 10)
    axes[1].set_ylim(bottom=1e-17)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.suptitle(f"gossip consensus at N={cfg['n']}, {cfg['mixing']} mixing, {cfg['modules']} modules "
                 f"{cfg['out']}x{cfg['in']} r={cfg['rank']}, spread {cfg['spread']}, seed {cfg['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16, help="number of peers")
    p.add_argument("--graphs", nargs="+", default=None,
                   help="topology specs or files with N nodes (default: ring, squarest torus, exp, complete)")
    p.add_argument("--mixing", choices=MIXING_RULES, default="metropolis", help="mixing-matrix rule")
    p.add_argument("--rounds", type=int, default=30, help="gossip rounds R")
    p.add_argument("--modules", type=int, default=4, help="LoRA modules per adapter")
    p.add_argument("--dim", type=int, default=256, help="in = out features of every module")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank of every peer and svd's target rank")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha of every peer")
    p.add_argument("--spread", type=float, default=1.0, help="per-peer offset size relative to the shared part")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic adapters")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--no-write", action="store_true", help="print only; write neither JSON nor plot")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    graphs = args.graphs or default_graphs(args.n)
    t0 = time.perf_counter()
    result = run(graphs, args.mixing, args.rounds, args.n, args.modules, args.dim, args.rank, args.alpha,
                 args.spread, args.seed)
    seconds = time.perf_counter() - t0
    st = result["start"]
    print(f"N={args.n}, {args.mixing} mixing, {args.rounds} rounds; {args.modules} modules {args.dim}x{args.dim} "
          f"r={args.rank}, spread {args.spread}, seed {args.seed}; float64")
    print(f"start: consensus_distance {st['consensus_distance']:.4g} (dense check rel. err "
          f"{st['consensus_distance_dense_check_rel_err']:.1e}); best rank-{args.rank} approximation of the mean "
          f"product is off by {st['rank_floor_of_mean_product']:.3f} (relative)")
    print(table(result["rows"]))
    print("measured: (D_T/D_0)^(1/T) of the factor disagreement D; worst round: max D_t+1/D_t; tail: geometric mean "
          "of the last third of the rounds; product rates: same over consensus_distance; mean drift: relative "
          f"distance of the network's mean product from the initial one after {args.rounds} rounds")
    bad = [r["graph"] for r in result["rows"] if not r["bound_holds"]]
    print(f"bound measured <= l2^2 (+{SLACK:g}): {'holds on every graph' if not bad else 'FAILS on ' + ', '.join(bad)}"
          f"; {seconds:.1f} s")
    if not args.no_write:
        png = RESULTS / "bench_topology.png"
        RESULTS.mkdir(parents=True, exist_ok=True)
        plot(result, png)
        path = write_result("bench_topology", {
            **result,
            "seconds": seconds,
            "threads": args.threads,
            "plot": png.name,
            "notes": "no training; synthetic float64 adapters; every peer mixes with declora.core.aggregate (gossip and "
                     "svd), gossip checked each round against M @ stacked factors. measured_contraction = "
                     "(D_T/D_0)^(1/T) over rounds above factor_floor * D_0; bound: measured <= |lambda_2|^2 + slack.",
        })
        print(f"wrote {path} and {png}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())

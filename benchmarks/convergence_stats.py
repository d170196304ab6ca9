"""bench_convergence over seeds: each method's mean and 95% confidence interval, and which differences between two
methods are significant.

A method is a run without its seed (Spec.name with seed 0). Its value per seed is the final dev accuracy of the
average model (`final.avg_model_accuracy`). Two methods are compared on the seeds both ran:
- paired t-test on the per-seed differences (scipy.stats.ttest_rel) when the seeds share the data split, i.e. the
  same --partition (every run of a preset has the same peers and holdout, and the seed fixes the split): seed s of
  method A and seed s of method B trained on the same shards, so the split's own luck cancels in the difference;
- Welch's t-test (scipy.stats.ttest_ind, equal_var=False) otherwise (e.g. IID against Dirichlet).
A difference is called at p < ALPHA; `holm` also says which calls survive Holm's correction for the number of
comparisons made (with 3 seeds and a few dozen pairs, few do: the per-pair call is the one to read with care).
"""
from __future__ import annotations

import math
from dataclasses import asdict, replace
from statistics import mean
from typing import Sequence

from scipy import stats

ALPHA = 0.05
LEVEL = 0.95
FINAL_KEYS = ("avg_model_accuracy", "avg_model_holdout_accuracy", "peer_accuracy_mean", "peer_accuracy_min",
              "mb_sent_per_peer", "mb_busiest_process", "wall_s")


def mean_ci(values: Sequence[float], level: float = LEVEL) -> dict:
    """Mean, sample standard deviation and the half-width of the t-distribution confidence interval (None with one
    value: no spread is known)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "half_width": None}
    m = mean(values)
    if n == 1:
        return {"n": 1, "mean": m, "sd": None, "half_width": None}
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return {"n": n, "mean": m, "sd": sd, "half_width": float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)}


def compare(a: dict[int, float], b: dict[int, float], paired: bool, alpha: float = ALPHA) -> dict:
    """A - B over seeds: the mean difference, its 95% interval, the p-value of the test and the call."""
    if paired:
        seeds = sorted(set(a) & set(b))
        diffs = [a[s] - b[s] for s in seeds]
        ci = mean_ci(diffs)
        if len(diffs) < 2:
            p = None
        elif ci["sd"] <= 1e-12:  # every seed moved by the same amount (to rounding): t is infinite, or 0/0
            p = 1.0 if abs(ci["mean"]) <= 1e-12 else 0.0
        else:
            p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
        return {"test": "paired t", "n": len(diffs), "diff": ci["mean"], "half_width": ci["half_width"], "p": p,
                "significant": p is not None and p < alpha}
    xa, xb = list(a.values()), list(b.values())
    if len(xa) < 2 or len(xb) < 2:
        return {"test": "Welch t", "n": min(len(xa), len(xb)), "diff": mean(xa) - mean(xb) if xa and xb else None,
                "half_width": None, "p": None, "significant": False}
    va, vb = (mean_ci(x)["sd"] ** 2 / len(x) for x in (xa, xb))
    se = math.sqrt(va + vb)
    diff = mean(xa) - mean(xb)
    if se <= 1e-12:
        p, half = (1.0 if abs(diff) <= 1e-12 else 0.0), 0.0
    else:
        p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
        dof = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))  # Welch-Satterthwaite
        half = float(stats.t.ppf((1 + LEVEL) / 2, dof)) * se
    return {"test": "Welch t", "n": min(len(xa), len(xb)), "diff": diff, "half_width": half, "p": p,
            "significant": p < alpha}


def holm(pvalues: Sequence[float | None], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down: which p-values stay significant when len(pvalues) tests are made (None: not tested)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    keep = [False] * len(pvalues)
    for rank, (p, i) in enumerate(order):
        if p >= alpha / (len(order) - rank):
            break
        keep[i] = True
    return keep


# ---- run records grouped by method ---------------------------------------------------------------------------------
def method_key(spec: dict) -> str:
    """The run's name without its seed: what the seeds of one method share."""
    from benchmarks.convergence_plan import Spec

    return replace(Spec(**spec), seed=0).name


def by_method(records: list[dict]) -> dict[str, list[dict]]:
    """The successful runs per method, in the order the methods first appear."""
    out: dict[str, list[dict]] = {}
    for r in records:
        if r["status"] == "ok" and r.get("final", {}).get("avg_model_accuracy") is not None:
            out.setdefault(method_key(r["spec"]), []).append(r)
    return out


def per_seed(runs: list[dict], key: str = "avg_model_accuracy") -> dict[int, float]:
    return {r["spec"].get("seed", 0): r["final"][key] for r in runs if r["final"].get(key) is not None}


def mean_records(records: list[dict]) -> list[dict]:
    """One record per method, shaped like a run's, whose `final` values are the means over its seeds and whose
    per-round average-model accuracies are the means of the seeds that evaluated that round; `seeds` lists them and
    `final_ci` holds mean_ci of each final value. The goal checks, table and plots read these."""
    out = []
    for runs in by_method(records).values():
        first = runs[0]
        final = dict(first["final"])
        cis = {}
        for key in FINAL_KEYS:
            vals = [r["final"][key] for r in runs if r["final"].get(key) is not None]
            if vals:
                cis[key] = mean_ci(vals)
                final[key] = cis[key]["mean"]
        rounds = []
        for i, row in enumerate(first["rounds"]):
            accs = [r["rounds"][i]["avg_model"]["accuracy"] for r in runs
                    if len(r["rounds"]) > i and "avg_model" in r["rounds"][i]]
            rounds.append({**row, "avg_model": {**row["avg_model"], "accuracy": mean(accs)}} if accs else row)
        out.append({**first, "spec": {**first["spec"], "seed": 0}, "final": final, "rounds": rounds,
                    "seeds": [r["spec"].get("seed", 0) for r in runs], "final_ci": cis,
                    # keyed by str(seed): the same after a round trip through the results JSON (--replot)
                    "per_seed_final": {str(r["spec"].get("seed", 0)): r["final"] for r in runs}})
    return out


def comparisons(records: list[dict]) -> list[dict]:
    """Every pair of methods worth comparing: two methods of the same group (r=8, heterogeneous, iid, codecs), any
    method against centralized LoRA on the same partition, a codec run against its method's fp32 r=8 run, one
    method on two partitions (IID against Dirichlet), and a server baseline against each r=8 method of its split."""
    methods = by_method(records)
    keys = list(methods)
    out = []
    for i, ka in enumerate(keys):
        for kb in keys[i + 1:]:
            sa, sb = methods[ka][0]["spec"], methods[kb][0]["spec"]
            same_group = sa["group"] == sb["group"]
            centralized = "centralized" in (sa["method"], sb["method"]) and sa["partition"] == sb["partition"]
            codec_base = {sa["group"], sb["group"]} == {"codecs", "r=8"} and sa["method"] == sb["method"]
            other_split = all(sa[k] == sb[k] for k in ("method", "ranks", "codec", "error_feedback")) \
                and sa["partition"] != sb["partition"]
            other_order = _same_but(sa, sb, "by_length")  # length-grouped batches or not, all else equal
            # Gossip against the parameter server on the same split (the drift preset keeps its server
            # baselines in their own group; the full preset has them among the r=8 runs).
            vs_server = {sa["group"], sb["group"]} == {"r=8", "server"} and sa["partition"] == sb["partition"]
            if not (same_group or centralized or codec_base or other_split or other_order or vs_server):
                continue
            result = compare(per_seed(methods[ka]), per_seed(methods[kb]), paired=sa["partition"] == sb["partition"])
            out.append({"a": ka, "b": kb, **result})
    for c, keep in zip(out, holm([c["p"] for c in out])):
        c["significant_holm"] = keep
    return out


def _same_but(sa: dict, sb: dict, key: str) -> bool:
    """Two runs' specs differ in `key` (missing = the Spec default) and in nothing but it and their group."""
    from benchmarks.convergence_plan import Spec

    a, b = asdict(replace(Spec(**sa), group="", seed=0)), asdict(replace(Spec(**sb), group="", seed=0))
    return a[key] != b[key] and {k: v for k, v in a.items() if k != key} == {k: v for k, v in b.items() if k != key}


def ci_markdown(records: list[dict]) -> str:
    """Per method: mean and 95% interval over seeds of the average model's and the worst peer's dev accuracy, the
    held-out (validation) accuracy, and MB sent per peer."""
    lines = ["| method | seeds | avg model dev % | worst peer dev % | avg model holdout % | MB/peer |",
             "|---|---|---|---|---|---|"]
    for key, runs in by_method(records).items():
        cells = [fmt_ci(mean_ci([r["final"][k] * 100 for r in runs if r["final"].get(k) is not None]))
                 for k in ("avg_model_accuracy", "peer_accuracy_min", "avg_model_holdout_accuracy")]
        mb = mean(r["final"]["mb_sent_per_peer"] for r in runs)
        seeds = ",".join(str(r["spec"].get("seed", 0)) for r in runs)
        lines.append(f"| {key} | {seeds} | {' | '.join(cells)} | {mb:.2f} |")
    return "\n".join(lines)


def fmt_ci(ci: dict) -> str:
    if ci["mean"] is None:
        return "-"
    return f"{ci['mean']:.2f}" + (f" ± {ci['half_width']:.2f}" if ci["half_width"] is not None else "")


def significance_markdown(found: list[dict]) -> str:
    """The significant differences first (A - B in points, its 95% interval, p and the test), then how many pairs
    were not resolved."""
    called = [c for c in found if c["significant"]]
    lines = [f"Differences called at p < {ALPHA} ({len(called)} of {len(found)} pairs compared; "
             f"'Holm' = still significant after Holm's correction for all {len(found)}):"]
    for c in sorted(called, key=lambda c: c["p"]):
        lines.append(f"- {c['a']} vs {c['b']}: {_points(c)} ({c['test']}, n={c['n']}, p={c['p']:.3g}"
                     f"{', Holm' if c['significant_holm'] else ''})")
    if not called:
        lines.append("- none")
    unresolved = [c for c in found if not c["significant"]]
    if unresolved:
        lines.append("Not resolved (no call): " + "; ".join(
            f"{c['a']} vs {c['b']} {_points(c)}" + ("" if c["p"] is not None else " (too few seeds)")
            for c in unresolved))
    return "\n".join(lines)


def _points(c: dict) -> str:
    if c["diff"] is None:
        return "-"
    return f"{100 * c['diff']:+.2f}" + (f" ± {100 * c['half_width']:.2f} pt" if c["half_width"] is not None else " pt")

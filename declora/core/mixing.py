"""Gossip mixing matrices for a peer graph, the checks that keep them honest, and a peer's per-round row.

A mixing matrix is an n x n numpy float64 array, symmetric and doubly stochastic, with weight only on the graph's
edges and the diagonal; `spectral_gap` says how fast repeated mixing reaches consensus. Pure networkx and numpy.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

MIXING_RULES = ("metropolis", "maxdegree", "laplacian")


def mixing_matrix(graph: nx.Graph, rule: str = "metropolis") -> np.ndarray:
    """The n x n gossip matrix of `rule` (one of MIXING_RULES) for a graph on nodes 0..n-1."""
    builders = {"metropolis": metropolis_weights, "maxdegree": maxdegree_weights, "laplacian": laplacian_weights}
    if rule not in builders:
        raise ValueError(f"unknown mixing rule {rule!r}; valid: {', '.join(MIXING_RULES)}")
    return builders[rule](graph)


def metropolis_weights(graph: nx.Graph) -> np.ndarray:
    """Metropolis-Hastings: 1 / (1 + max(deg i, deg j)) on each edge, the rest of the row on the diagonal."""
    degree = _degrees(graph)
    M = np.zeros((len(degree), len(degree)))
    for i, j in graph.edges():
        M[i, j] = M[j, i] = 1.0 / (1 + max(degree[i], degree[j]))
    return _fill_diagonal(M)


def maxdegree_weights(graph: nx.Graph) -> np.ndarray:
    """1 / (1 + max degree) on each edge, the rest on the diagonal: simple, but slow on irregular graphs."""
    degree = _degrees(graph)
    M = _adjacency(graph) / (1.0 + degree.max())
    return _fill_diagonal(M)


def laplacian_weights(graph: nx.Graph) -> np.ndarray:
    """Dec-LoRA's I - 2L / (3 lambda_max(L)); the 2/3 keeps every eigenvalue in [1/3, 1], so no sign flips."""
    A = _adjacency(graph)
    L = np.diag(A.sum(axis=1)) - A
    lambda_max = np.linalg.eigvalsh(L)[-1]
    if lambda_max == 0:  # no edges at all: nobody to mix with
        return np.eye(len(A))
    return np.eye(len(A)) - 2.0 * L / (3.0 * lambda_max)


def _degrees(graph: nx.Graph) -> np.ndarray:
    return np.array([graph.degree(i) for i in range(graph.number_of_nodes())], dtype=np.int64)


def _adjacency(graph: nx.Graph) -> np.ndarray:
    n = graph.number_of_nodes()
    A = np.zeros((n, n))
    for i, j in graph.edges():
        if i != j:
            A[i, j] = A[j, i] = 1.0
    return A


def _fill_diagonal(M: np.ndarray) -> np.ndarray:
    np.fill_diagonal(M, 0.0)
    np.fill_diagonal(M, 1.0 - M.sum(axis=1))
    return M


def check_mixing(M: np.ndarray, graph: nx.Graph, atol: float = 1e-9) -> None:
    """Raise ValueError naming the first problem unless M is a valid gossip matrix for the connected graph."""
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise ValueError(f"graph nodes must be 0..{n - 1}")
    if n == 0 or not nx.is_connected(graph):
        parts = nx.number_connected_components(graph) if n else 0
        raise ValueError(f"graph is not connected ({parts} components): gossip cannot reach consensus")
    M = np.asarray(M, dtype=np.float64)
    if M.shape != (n, n):
        raise ValueError(f"mixing matrix has shape {M.shape}, expected ({n}, {n}) for a graph of {n} nodes")
    if not np.isfinite(M).all():
        raise ValueError("mixing matrix has NaN or Inf entries")
    _check_no_negative(M, atol)
    _check_support(M, graph, atol)
    _check_symmetric(M, atol)
    _check_doubly_stochastic(M, atol)


def _check_no_negative(M: np.ndarray, atol: float) -> None:
    bad = np.argwhere(M < -atol)
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"mixing matrix has negative entries, first M[{i}, {j}] = {M[i, j]:.6g}")


def _check_support(M: np.ndarray, graph: nx.Graph, atol: float) -> None:
    allowed = _adjacency(graph) + np.eye(len(M))
    bad = np.argwhere((np.abs(M) > atol) & (allowed == 0))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"mixing matrix has weight off the graph: M[{i}, {j}] = {M[i, j]:.6g} but {i}-{j} is no edge")


def _check_symmetric(M: np.ndarray, atol: float) -> None:
    bad = np.argwhere(np.abs(M - M.T) > atol)
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"mixing matrix is not symmetric: M[{i}, {j}] = {M[i, j]:.6g} != M[{j}, {i}] = {M[j, i]:.6g}")


def _check_doubly_stochastic(M: np.ndarray, atol: float) -> None:
    for axis, name in ((1, "row"), (0, "column")):
        sums = M.sum(axis=axis)
        bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
        if len(bad):
            k = bad[0]
            raise ValueError(f"mixing matrix is not doubly stochastic: {name} {k} sums to {sums[k]:.12g}, not 1")


def spectral_gap(M: np.ndarray) -> float:
    """1 - |lambda_2|, lambda_2 the eigenvalue of second largest magnitude: how fast gossip reaches consensus."""
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] < 2:
        raise ValueError(f"spectral gap needs a square matrix of size >= 2, got shape {M.shape}")
    eigenvalues = np.linalg.eigvalsh(M) if np.allclose(M, M.T) else np.linalg.eigvals(M)
    magnitudes = np.sort(np.abs(eigenvalues))[::-1]
    return float(1.0 - magnitudes[1])


def mixing_row(M: np.ndarray, i: int) -> dict[int, float]:
    """Peer i's row as {peer: weight}, self included, zero weights left out."""
    return {int(j): float(M[i, j]) for j in np.flatnonzero(M[i])}


def renormalize_row(row_weights: dict[int, float], self_id: int, heard: set[int]) -> dict[int, float]:
    """Drop the neighbours not heard from this round and move their weight onto self, so the row still sums to 1.

    `row_weights` is this peer's row (self and neighbours; self may be absent, meaning weight 0). Ids in `heard`
    that are not in the row are ignored. With every neighbour heard the row comes back unchanged, bit for bit.
    """
    _check_row(row_weights)
    kept = {self_id: row_weights.get(self_id, 0.0)}
    lost = 0.0
    for peer, weight in row_weights.items():
        if peer == self_id:
            continue
        if peer in heard:
            kept[peer] = weight
        else:
            lost += weight
    kept[self_id] += lost
    return kept


def discount_row(row_weights: dict[int, float], self_id: int, keep: dict[int, float]) -> dict[int, float]:
    """Scale the weight of each peer in `keep` by its factor in [0, 1] (bounded staleness: a late message counts
    less) and move what they lose onto self, so the row still sums to 1 and stays symmetric wherever the late
    neighbour discounts us the same way."""
    out = dict(row_weights)
    for peer, factor in keep.items():
        if peer == self_id or peer not in out:
            continue
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"discount for peer {peer} must be in [0, 1], got {factor!r}")
        lost = out[peer] * (1.0 - factor)
        out[peer] -= lost
        out[self_id] = out.get(self_id, 0.0) + lost
    return out


def _check_row(row_weights: dict[int, float]) -> None:
    # A row that does not sum to 1 would silently rescale the adapter; refuse it rather than renormalize it.
    total = 0.0
    for peer, weight in row_weights.items():
        if not weight >= 0:  # NaN fails this too
            raise ValueError(f"mixing row has weight {weight!r} for peer {peer}; weights must be >= 0")
        total += weight
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"mixing row sums to {total:.12g}, not 1")

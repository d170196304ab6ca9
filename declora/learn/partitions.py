"""Partitions: split examples across peers (iid, Dirichlet or label skew over each example's group, or one file per
peer from a pre-split folder), and describe what each peer got."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from declora.learn.data_files import is_dataset_folder, is_shard_folder
from declora.learn.examples import DataSpec, Example, TextExample, group_of, load_examples, presplit_files

# Float labels (regression scores) are binned into this many equal-count groups before a split skews over them.
# Quantile bins, not the floor of the value: they give every score scale the same number of groups of the same size
# (the floor would put a 0-1 score in one group, and STS-B's 5.0 alone in one), so dirichlet:ALPHA and
# labelskew:K mean on scores what they mean on classes.
SCORE_BINS = 5
HOLDOUT_STREAM = 0x401D  # the holdout's draw: a random stream of its own, apart from the split's (seed alone)


def parse_scheme(scheme: str) -> tuple[str, float | None]:
    """'iid' | 'dirichlet:ALPHA' | 'labelskew:K' | 'files' -> (kind, parameter)."""
    kind, _, arg = scheme.partition(":")
    if kind in ("iid", "files") and not arg:
        return kind, None
    if kind in ("dirichlet", "labelskew") and arg:
        try:
            value = float(arg)
        except ValueError:
            value = -1.0
        if kind == "dirichlet" and value > 0:
            return kind, value
        if kind == "labelskew" and value >= 1 and value == int(value):
            return kind, int(value)
    raise ValueError(f"partition scheme must be iid, dirichlet:ALPHA (ALPHA > 0), labelskew:K (K >= 1) or files, "
                     f"got {scheme!r}")


def partition(examples: Sequence[Example], n: int, scheme: str = "iid", seed: int = 0,
              min_size: int | None = None) -> list[list[Example]]:
    """Split examples across n peers; the same arguments always give the same split."""
    return [[examples[i] for i in part] for part in partition_indices(examples, n, scheme, seed, min_size)]


def partition_indices(examples: Sequence[Example], n: int, scheme: str = "iid", seed: int = 0,
                      min_size: int | None = None) -> list[list[int]]:
    """Indices into `examples` per peer (disjoint). Every peer gets at least `min_size` examples (default: a
    batch of 32, or an equal share when there is less data): a skewed draw that starves a peer is redrawn, and if
    that keeps failing the largest peers give examples to the smallest.

    `labelskew:K` gives each peer K groups (labels or categories), each group shared equally among the peers that
    hold it; with n * K < number of groups some groups are held by no peer and left out.
    """
    kind, arg = parse_scheme(scheme)
    if kind == "files":
        raise ValueError("the 'files' partition reads a folder of per-peer files: use split_for_peers(folder, ...)")
    if n < 1:
        raise ValueError(f"need at least one peer, got {n}")
    if len(examples) < n:
        raise ValueError(f"{len(examples)} examples cannot be split across {n} peers")
    min_size = min(32, len(examples) // n) if min_size is None else min_size
    rng = np.random.default_rng(seed)
    groups = _indices_by_group(examples)
    if kind == "iid":
        parts = [list(p) for p in np.array_split(rng.permutation(len(examples)), n)]
    elif kind == "dirichlet":
        parts = _dirichlet_split(groups, n, arg, rng, min_size)
    else:
        parts = _labelskew_split(groups, n, arg, rng)
    parts = _top_up(parts, min_size)
    return [[int(i) for i in rng.permutation(part)] for part in parts]


def groups_of(examples: Sequence[Example]) -> list:
    """Every example's group: its label or category; for float labels, its quantile bin named by its range."""
    groups = [group_of(e) for e in examples]
    if not any(isinstance(g, float) for g in groups):
        return groups
    values = np.asarray(groups, dtype=float)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, SCORE_BINS + 1)))
    if len(edges) < 2:
        return [f"{values[0]:g}"] * len(values)
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return [f"{edges[b]:g}-{edges[b + 1]:g}" for b in bins]


def _indices_by_group(examples: Sequence[Example]) -> dict:
    groups: dict = {}
    for i, group in enumerate(groups_of(examples)):
        groups.setdefault(group, []).append(i)
    return {g: groups[g] for g in sorted(groups, key=str)}


def _dirichlet_split(groups: dict, n: int, alpha: float, rng: np.random.Generator, min_size: int,
                     attempts: int = 100) -> list[list[int]]:
    """Per group, shares ~ Dirichlet(alpha); redraw (deterministically) while some peer gets fewer than min_size."""
    for _ in range(attempts):
        parts: list[list[int]] = [[] for _ in range(n)]
        for members in groups.values():
            shuffled = rng.permutation(members)
            shares = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(int)
            for peer, chunk in enumerate(np.split(shuffled, cuts)):
                parts[peer].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            break
    return parts


def _labelskew_split(groups: dict, n: int, k: int, rng: np.random.Generator) -> list[list[int]]:
    names = list(groups)
    if k > len(names):
        raise ValueError(f"labelskew:{k} asks for {k} labels per peer but the data has only {len(names)}: {names}")
    order = rng.permutation(len(names))
    holders: dict[int, list[int]] = {g: [] for g in range(len(names))}
    for peer in range(n):
        for j in range(k):
            holders[int(order[(peer * k + j) % len(names)])].append(peer)
    parts: list[list[int]] = [[] for _ in range(n)]
    for g, peers in holders.items():
        if not peers:
            continue
        for peer, chunk in zip(peers, np.array_split(rng.permutation(groups[names[g]]), len(peers))):
            parts[peer].extend(chunk.tolist())
    return parts


def _top_up(parts: list[list[int]], min_size: int) -> list[list[int]]:
    """Move examples from the largest peers to any peer below min_size, so no peer trains on (almost) nothing."""
    parts = [list(p) for p in parts]
    while True:
        small = min(range(len(parts)), key=lambda i: len(parts[i]))
        large = max(range(len(parts)), key=lambda i: len(parts[i]))
        need = min_size - len(parts[small])
        if need <= 0 or len(parts[large]) - need < min_size:
            return parts
        parts[small].extend(parts[large][-need:])
        del parts[large][-need:]


def holdout_indices(total: int, holdout: int, seed: int, peers: int = 1) -> list[int]:
    """The `holdout` examples (indices into the whole training set, sorted) that no peer trains on: a validation
    split for model selection and the curves. Drawn from the whole set before the split, from a stream of the run's
    seed of its own, so every peer holds out the same examples and the split of the rest depends on the seed only."""
    if holdout < 0:
        raise ValueError(f"--holdout must be >= 0 (0 = none), got {holdout}")
    if holdout and total - holdout < peers:
        raise ValueError(f"--holdout {holdout} leaves {total - holdout} of the {total} training examples for "
                         f"{peers} peer(s); give a smaller --holdout (below {total - peers + 1})")
    if not holdout:
        return []
    return sorted(int(i) for i in np.random.default_rng([seed, HOLDOUT_STREAM]).permutation(total)[:holdout])


def split_holdout(examples: Sequence[Example], holdout: int, seed: int, peers: int = 1
                  ) -> tuple[list[Example], list[Example]]:
    """(held out, the rest in their original order): see holdout_indices."""
    held = set(holdout_indices(len(examples), holdout, seed, peers))
    return [examples[i] for i in sorted(held)], [e for i, e in enumerate(examples) if i not in held]


def pooled_examples(data_path: str | Path, spec: DataSpec | None = None, **load_kwargs) -> list[Example]:
    """The whole training set: a file or a datasets folder, or a folder's per-peer files pooled."""
    data_path = Path(data_path)
    if is_shard_folder(data_path):
        return [e for f in presplit_files(data_path) for e in load_examples(f, spec, **load_kwargs)]
    return load_examples(data_path, spec, **load_kwargs)


def split_for_peers(data_path: str | Path, n: int, scheme: str = "iid", seed: int = 0,
                    min_size: int | None = None, spec: DataSpec | None = None, holdout: int = 0,
                    **load_kwargs) -> list[list[Example]]:
    """Every peer's examples. A folder with the 'files' scheme: peer i gets the folder's file i. A folder with
    another scheme: its per-peer files are pooled and re-partitioned. A file, or a datasets save_to_disk folder (one
    dataset): loaded and partitioned. `holdout` examples are taken out before the split (split_holdout)."""
    if parse_scheme(scheme)[0] == "files":
        if holdout:
            raise ValueError(_FILES_HOLDOUT)
        files = _files_for(Path(data_path), n)
        return [load_examples(f, spec, **load_kwargs) for f in files]
    _, rest = split_holdout(pooled_examples(data_path, spec, **load_kwargs), holdout, seed, n)
    return partition(rest, n, scheme, seed, min_size)


def peer_examples(data_path: str | Path, n: int, scheme: str, seed: int, peer_index: int,
                  min_size: int | None = None, spec: DataSpec | None = None, holdout: int = 0,
                  **load_kwargs) -> list[Example]:
    """One peer's share; with 'files' only its own file is read."""
    if not 0 <= peer_index < n:
        raise ValueError(f"peer index {peer_index} is outside 0..{n - 1}")
    if parse_scheme(scheme)[0] == "files":
        if holdout:
            raise ValueError(_FILES_HOLDOUT)
        return load_examples(_files_for(Path(data_path), n)[peer_index], spec, **load_kwargs)
    return split_for_peers(data_path, n, scheme, seed, min_size, spec, holdout, **load_kwargs)[peer_index]


# A pre-split folder's files are the peers' data as given: a holdout would have to take from some of them.
_FILES_HOLDOUT = ("--holdout draws from the whole training set before the split, but the 'files' partition gives "
                  "each peer its own file as it is; use --partition iid or dirichlet:ALPHA, or --holdout 0")


def _files_for(folder: Path, n: int) -> list[Path]:
    if is_dataset_folder(folder):
        raise ValueError(f"{folder} is one dataset (a save_to_disk folder), not a folder of per-peer files; use "
                         f"--partition iid or dirichlet:ALPHA")
    files = presplit_files(folder)
    if len(files) < n:
        raise ValueError(f"{folder} has {len(files)} per-peer files, fewer than the {n} peers")
    return files[:n]


def describe(examples: Sequence[Example]) -> dict:
    """Sample count and histogram of labels (or categories): what each peer logs about its share."""
    kind = "categories" if examples and not isinstance(examples[0], TextExample) else (
        "scores" if any(isinstance(e.label, float) for e in examples) else "labels")
    # Scores are counted per unit interval, not by the split's quantile bins: a peer knows only its own share, and
    # fixed intervals keep the peers' histograms comparable.
    counts = Counter(f"{math.floor(e.label)}-{math.floor(e.label) + 1}" for e in examples) if kind == "scores" \
        else Counter(group_of(e) for e in examples)
    return {"samples": len(examples), "kind": kind, "histogram": {str(g): counts[g] for g in sorted(counts, key=str)}}


def format_description(examples: Sequence[Example]) -> str:
    info = describe(examples)
    hist = ", ".join(f"{g}: {c}" for g, c in info["histogram"].items())
    return f"{info['samples']} samples; {info['kind']} {{{hist}}}"

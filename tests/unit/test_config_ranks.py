"""Where each peer's LoRA rank comes from: --ranks, else the topology file's per-node `rank`, else 8."""
from __future__ import annotations

from pathlib import Path

import pytest

from declora.config import DEFAULT_RANK, ConfigError, RunConfig, validate

TWO_NODES = str(Path(__file__).resolve().parents[2] / "topologies" / "ring-4-two-nodes.toml")  # ranks 8,8,4,4


def test_the_topology_files_node_ranks_are_the_peers_ranks():
    cfg = validate(RunConfig(peers=4, topology=TWO_NODES, mode="svd"))
    assert cfg.rank_list() == [8, 8, 4, 4]
    assert "ring-4-two-nodes.toml" in cfg.ranks_origin()


def test_explicit_ranks_win_over_the_file():
    assert validate(RunConfig(peers=4, topology=TWO_NODES, ranks="2")).rank_list() == [2, 2, 2, 2]
    assert RunConfig(peers=4, topology=TWO_NODES, ranks="1,2,3,4").rank_list() == [1, 2, 3, 4]


def test_nodes_without_a_rank_get_the_default(tmp_path):
    path = tmp_path / "tri.toml"
    path.write_text("nodes = [{id = 0, rank = 4}, {id = 1}, {id = 2}]\nedges = [[0, 1], [1, 2], [2, 0]]\n")
    assert RunConfig(peers=3, topology=str(path)).rank_list() == [4, DEFAULT_RANK, DEFAULT_RANK]
    path.write_text("edges = [[0, 1], [1, 2], [2, 0]]\n")  # no node ranks at all: the default everywhere
    assert RunConfig(peers=3, topology=str(path)).rank_list() == [DEFAULT_RANK] * 3
    assert RunConfig(peers=5, topology="ring").rank_list() == [DEFAULT_RANK] * 5


def test_gossip_on_a_heterogeneous_rank_file_names_where_the_ranks_came_from():
    with pytest.raises(ConfigError, match=r"ring-4-two-nodes.toml.* gives 8,8,4,4; use --mode stack, svd or zeropad"):
        validate(RunConfig(peers=4, topology=TWO_NODES, mode="gossip"))
    with pytest.raises(ConfigError, match=r"gives 4 ranks for 6 peers"):
        validate(RunConfig(peers=6, topology=TWO_NODES, mode="svd"))

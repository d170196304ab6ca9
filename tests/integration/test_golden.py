"""The golden test: fixed-seed runs give bit-identical adapters, losses, metrics and byte counts to the hashes
committed in tests/golden/golden-<cpu capability>.json (recorded with real peer processes over ZeroMQ before the layout
refactor; the AVX2 file later, from a commit that matched the AVX-512 one)."""
from __future__ import annotations

import pytest

from tests.golden.record import run_in_one_process, run_simulated
from tests.golden.scenarios import SCENARIOS, check_complete, compare, load_golden

GOLDEN = load_golden()


def assert_matches(name: str, records: dict) -> None:
    problems = check_complete(name, records)
    if problems:  # a missed neighbour changes the mix: this run says nothing about determinism
        pytest.fail("run not comparable (not deterministic): " + "; ".join(problems))
    diffs = compare(name, GOLDEN[name], records)
    assert not diffs, "differs from the golden hashes:\n" + "\n".join(diffs[:20])


def test_golden_file_covers_every_scenario():
    assert sorted(GOLDEN) == sorted(SCENARIOS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_in_process_network_matches_the_golden_hashes(name, tmp_path):
    assert_matches(name, run_in_one_process(name, tmp_path, "inproc"))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_zeromq_in_one_process_matches_the_golden_hashes(name, tmp_path):
    assert_matches(name, run_in_one_process(name, tmp_path, "zmq"))


# One scenario as real processes ties the twins above to what was recorded: the server and its clients, each
# in a fresh interpreter (where torch seeds its generator at random), with a merge into the base.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["server-flora-mixed"])
def test_real_processes_match_the_golden_hashes(name, tmp_path):
    assert_matches(name, run_simulated(name, tmp_path))

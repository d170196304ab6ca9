"""--holdout N: a validation split that no peer trains on, drawn with the run's seed before the split."""
from __future__ import annotations

import pytest

from declora.cli import main
from declora.config import ConfigError, RunConfig
from declora.learn.examples import TextExample, load_examples
from declora.learn.partitions import holdout_indices, partition, split_for_peers, split_holdout
from declora.node.workload import check_holdout


def examples(n: int = 400) -> list[TextExample]:
    return [TextExample(f"sentence {i}", i % 3) for i in range(n)]


def write_tsv(path, n: int = 400):
    path.write_text("sentence\tlabel\n" + "".join(f"sentence {i}\t{i % 2}\n" for i in range(n)))
    return path


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.5", "labelskew:1"])
def test_no_held_out_example_is_in_any_peers_shard(tmp_path, scheme):
    data = write_tsv(tmp_path / "train.tsv")
    shards = split_for_peers(data, 4, scheme, seed=3, holdout=50)
    held_texts = {e.text for e in split_holdout(load_examples(data), 50, seed=3)[0]}
    trained = [e.text for shard in shards for e in shard]
    assert len(held_texts) == 50
    assert not held_texts & set(trained)
    if scheme != "labelskew:1":  # labelskew:1 with 4 peers and 2 labels leaves no class unheld; every example used
        assert len(trained) + 50 == 400


def test_every_peer_holds_out_the_same_examples_and_the_seed_decides_which():
    data = examples()
    first = split_holdout(data, 40, seed=0)[0]
    assert first == split_holdout(data, 40, seed=0)[0]  # each peer process computes it again: the same 40
    assert first != split_holdout(data, 40, seed=1)[0]
    assert holdout_indices(400, 40, 0) == sorted(holdout_indices(400, 40, 0))


def test_no_holdout_leaves_the_split_as_it_was(tmp_path):
    data = write_tsv(tmp_path / "train.tsv")
    loaded = load_examples(data)
    assert split_for_peers(data, 4, "dirichlet:0.5", seed=2) == partition(loaded, 4, "dirichlet:0.5", seed=2)


def test_the_rest_keeps_its_order_and_the_split_of_the_rest_is_the_usual_one(tmp_path):
    data = write_tsv(tmp_path / "train.tsv")
    loaded = load_examples(data)
    held, rest = split_holdout(loaded, 30, seed=5)
    assert [e for e in loaded if e not in held] == rest
    assert split_for_peers(data, 3, "iid", seed=5, holdout=30) == partition(rest, 3, "iid", seed=5)


@pytest.mark.parametrize("n,peers", [(400, 1), (399, 2), (-1, 1)])
def test_a_holdout_that_leaves_no_training_data_is_refused(n, peers):
    with pytest.raises(ValueError, match="--holdout"):
        holdout_indices(400, n, 0, peers)


def test_a_bad_holdout_is_a_config_error(tmp_path):
    data = write_tsv(tmp_path / "train.tsv")
    with pytest.raises(ConfigError, match="--holdout 400 leaves 0 of the 400"):
        check_holdout(RunConfig(data=str(data), eval_data=str(data), holdout=400, peers=2))
    with pytest.raises(ConfigError, match="files"):
        check_holdout(RunConfig(data=str(tmp_path), eval_data=str(data), holdout=5, partition="files"))
    check_holdout(RunConfig(data=str(data), eval_data=str(data), holdout=398, peers=2))  # leaves one each


def test_simulate_with_too_large_a_holdout_stops_with_one_line(capsys, tmp_path):
    data = write_tsv(tmp_path / "train.tsv", 100)
    rc = main(["simulate", "--model", "tiny-bert", "--data", str(data), "--eval-data", str(data), "--holdout", "100",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "--holdout 100 leaves 0 of the 100 training examples" in err
    assert not (tmp_path / "run" / "metrics").exists()

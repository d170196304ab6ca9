"""Loading, partitioning and describing data (no model, no tokenizer)."""
from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from declora.learn.examples import (InstructionExample, TextExample, default_dataset, held_out_file, load_examples,
                                    presplit_files, task_of)
from declora.learn.partitions import (describe, format_description, parse_scheme, partition, partition_indices,
                                      peer_examples, split_for_peers)
from tests.tiny_models import DOLLY_RECORDS, DOLLY_SPLIT, write_dolly_json, write_sst_tsv


# ---- loaders --------------------------------------------------------------------------------------------------------
def test_single_sentence_tsv_splits_on_the_last_tab(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nit 's a \t charming film \t1\ndull \t0\n\n")
    examples = load_examples(path)
    assert examples == [TextExample("it 's a \t charming film", 1), TextExample("dull", 0)]
    assert task_of(examples) == "classification"


def test_sentence_pair_tsv_with_glue_column_names(tmp_path):
    mrpc = tmp_path / "mrpc.tsv"
    mrpc.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t10\t11\tA man runs.\tSomeone runs.\n")
    assert load_examples(mrpc) == [TextExample("A man runs.", 1, "Someone runs.")]
    qnli = tmp_path / "qnli.tsv"
    qnli.write_text("index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tentailment\n1\tWhat?\tNo.\tnot_entailment\n")
    assert [(e.text, e.text_pair, e.label) for e in load_examples(qnli)] == [("Who?", "Him.", 0), ("What?", "No.", 1)]
    pair = tmp_path / "pair.tsv"
    pair.write_text("sentence1\tsentence2\tlabel\na\tb\t0\n")
    assert load_examples(pair) == [TextExample("a", 0, "b")]


def test_string_labels_follow_label_names(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("sentence\tlabel\ngood\tpos\nbad\tneg\n")
    assert [e.label for e in load_examples(path)] == [1, 0]  # sorted: neg=0, pos=1
    assert [e.label for e in load_examples(path, label_names=["pos", "neg"])] == [0, 1]
    with pytest.raises(ValueError, match="not one of"):
        load_examples(path, label_names=["pos"])


def test_csv_with_header_and_quoting(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('id,text,label\n1,"good, really good",1\n2,bad,0\n')
    assert load_examples(path) == [TextExample("good, really good", 1), TextExample("bad", 0)]
    custom = tmp_path / "custom.csv"
    custom.write_text("body,stars\nfine,3\n")
    assert load_examples(custom, text_columns=["body"], label_column="stars") == [TextExample("fine", 3)]


def test_missing_columns_and_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples(tmp_path / "nope.tsv")
    unlabeled = tmp_path / "test.tsv"
    unlabeled.write_text("index\tsentence\n0\thello\n")
    with pytest.raises(ValueError, match="no label column"):
        load_examples(unlabeled)
    no_text = tmp_path / "x.csv"
    no_text.write_text("foo,label\na,1\n")
    with pytest.raises(ValueError, match="no text column"):
        load_examples(no_text)
    with pytest.raises(ValueError, match="no column 'body'"):
        load_examples(no_text, text_columns=["body"])
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("a\tb\tlabel\nx\t1\n")
    with pytest.raises(ValueError, match="ragged.tsv:2"):
        load_examples(ragged)
    with pytest.raises(ValueError, match="unknown data format"):
        load_examples(write_sst_tsv(tmp_path / "data.txt"))
    with pytest.raises(ValueError, match="is a folder"):
        load_examples(tmp_path)


def test_dolly_json_and_alpaca_jsonl(tmp_path):
    dolly = load_examples(write_dolly_json(tmp_path / "dolly.json"))
    assert len(dolly) == len(DOLLY_RECORDS)
    assert dolly[1] == InstructionExample("Summarize the text.", "A cat sat on a mat.",
                                          "The cat sat on the mat all day long.", "summarization")
    assert task_of(dolly) == "causal_lm"
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Add.", "input": "1+1", "output": "2"}) + "\n")
    assert load_examples(alpaca) == [InstructionExample("Add.", "2", "1+1", "")]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"instruction": "no answer"}]))
    with pytest.raises(ValueError, match="lacks response"):
        load_examples(broken)
    assert load_examples(write_dolly_json(tmp_path / "d.jsonl", jsonl=True)) == dolly


def test_gzip_is_read_transparently(tmp_path):
    plain = write_sst_tsv(tmp_path / "train.tsv")
    packed = tmp_path / "train.tsv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_examples(packed) == load_examples(plain)


def test_shipped_sst2_counts():
    paths = default_dataset()
    assert paths.train.name == "train.tsv.gz" and paths.eval.name == "dev.tsv.gz"
    train, dev = load_examples(paths.train), load_examples(paths.eval)
    assert describe(train) == {"samples": 67349, "kind": "labels", "histogram": {"0": 29780, "1": 37569}}
    assert describe(dev) == {"samples": 872, "kind": "labels", "histogram": {"0": 428, "1": 444}}
    assert train[0] == TextExample("hide new secretions from the parental units", 0)


# ---- partitions -----------------------------------------------------------------------------------------------------
def labeled(n_per_label: dict[int, int]) -> list[TextExample]:
    return [TextExample(f"{label}-{i}", label) for label, n in n_per_label.items() for i in range(n)]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.5", "dirichlet:0.1", "labelskew:1", "labelskew:2"])
def test_partition_is_deterministic_disjoint_and_complete(scheme):
    examples = labeled({0: 300, 1: 500, 2: 200})
    parts = partition_indices(examples, 4, scheme, seed=3)
    assert parts == partition_indices(examples, 4, scheme, seed=3)
    assert parts != partition_indices(examples, 4, scheme, seed=4)
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat)) == len(examples)  # n * K >= 3 labels here, so nothing is left out
    assert min(len(p) for p in parts) >= 32


def test_iid_partition_is_balanced():
    parts = partition(labeled({0: 500, 1: 500}), 4, "iid", seed=0)
    assert [len(p) for p in parts] == [250] * 4
    for part in parts:
        assert 0.35 < sum(e.label for e in part) / len(part) < 0.65


def label_share_spread(parts) -> float:
    """Mean over peers of |share of label 1 - global share|: 0 for IID, large for skewed splits."""
    total = sum(len(p) for p in parts)
    global_share = sum(e.label for p in parts for e in p) / total
    return sum(abs(sum(e.label for e in p) / len(p) - global_share) for p in parts) / len(parts)


def test_dirichlet_skew_grows_as_alpha_shrinks():
    examples = labeled({0: 2000, 1: 2000})
    iid = label_share_spread(partition(examples, 8, "iid", 0))
    mild = label_share_spread(partition(examples, 8, "dirichlet:100", 0))
    skewed = label_share_spread(partition(examples, 8, "dirichlet:0.1", 0))
    assert iid < 0.05 and mild < 0.1
    assert skewed > 0.25


def test_dirichlet_tops_up_starved_peers():
    examples = labeled({0: 200, 1: 200})
    parts = partition(examples, 10, "dirichlet:0.01", seed=1, min_size=30)
    assert min(len(p) for p in parts) >= 30
    assert sum(len(p) for p in parts) == 400


def test_labelskew_gives_each_peer_k_labels():
    examples = labeled({0: 100, 1: 100, 2: 100, 3: 100})
    for k in (1, 2):
        for part in partition(examples, 4, f"labelskew:{k}", seed=0):
            assert len({e.label for e in part}) == k
    with pytest.raises(ValueError, match="only 4"):
        partition(examples, 4, "labelskew:5")


def test_partition_by_category_for_instruction_data():
    records = [InstructionExample(f"q{i}", "a", "", cat) for i in range(400) for cat in ("qa", "summary")][:400]
    parts = partition(records, 4, "labelskew:1", seed=0, min_size=1)
    assert all(len({e.category for e in p}) == 1 for p in parts)
    assert describe(parts[0])["kind"] == "categories"


def test_bad_schemes_are_rejected():
    for bad in ("dirichlet", "dirichlet:0", "dirichlet:x", "labelskew:1.5", "random", "iid:3"):
        with pytest.raises(ValueError, match="partition scheme"):
            parse_scheme(bad)
    with pytest.raises(ValueError, match="folder of per-peer files"):
        partition(labeled({0: 10}), 2, "files")
    with pytest.raises(ValueError, match="cannot be split"):
        partition(labeled({0: 3}), 4, "iid")


def test_presplit_folder_gives_peer_i_file_i(tmp_path):
    for i in range(12):  # 10 and 11 must sort after 9
        write_dolly_json(tmp_path / f"local_training_{i}.json", [dict(DOLLY_RECORDS[0], instruction=f"peer {i}")])
    write_dolly_json(tmp_path / "global_test.json")
    files = presplit_files(tmp_path)
    assert [f.name for f in files] == [f"local_training_{i}.json" for i in range(12)]
    assert held_out_file(tmp_path).name == "global_test.json"
    parts = split_for_peers(tmp_path, 11, "files")
    assert [p[0].instruction for p in parts] == [f"peer {i}" for i in range(11)]
    assert peer_examples(tmp_path, 11, "files", 0, 10)[0].instruction == "peer 10"
    with pytest.raises(ValueError, match="fewer than the 13 peers"):
        split_for_peers(tmp_path, 13, "files")
    pooled = split_for_peers(tmp_path, 3, "iid", seed=0, min_size=1)
    assert sorted(e.instruction for p in pooled for e in p) == sorted(f"peer {i}" for i in range(12))
    (tmp_path / "local_training_0.json").unlink()
    with pytest.raises(ValueError, match="numbered 0"):
        presplit_files(tmp_path)


@pytest.mark.skipif(not DOLLY_SPLIT.is_dir(), reason="shared Dolly split not present")
def test_shared_flora_split():
    parts = split_for_peers(DOLLY_SPLIT, 10, "files")
    assert len(parts) == 10 and all(1400 < len(p) < 1600 for p in parts)
    assert all(2 <= len(describe(p)["histogram"]) <= 3 for p in parts)


def test_describe_counts_groups():
    examples = labeled({0: 3, 1: 5})
    assert describe(examples) == {"samples": 8, "kind": "labels", "histogram": {"0": 3, "1": 5}}
    assert format_description(examples) == "8 samples; labels {0: 3, 1: 5}"
    assert Counter(e.label for e in examples) == {0: 3, 1: 5}

"""Bring-your-own-data formats: headerless and CSV-quoted TSV, JSONL classification, Parquet, save_to_disk folders,
float (regression) labels, the known GLUE layouts, and the one-line errors of every loader."""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import replace

import pytest

from declora.learn.data_files import quoted_tsv
from declora.learn.examples import (DataSpec, InstructionExample, TextExample, held_out_file, known_layout,
                                    load_examples, presplit_files, sniff_task, task_of)
from declora.learn.partitions import (SCORE_BINS, describe, groups_of, partition, partition_indices,
                                      split_for_peers)

COLA_RAW = ("gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
            "gj04\t0\t*\tOne more pseudo generality and I'm giving up.\n"
            "gj04\t1\t\tThe more we study verbs, the crazier they get.\n"
            "cj99\t0\t*\tThey drank the pub.\n")
MRPC = ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " .\tReferring to him as '
        'only " the witness " , Amrozi accused his brother .\n'
        '0\t2108705\t2108831\t"Yucaipa owned Dominick \'s before selling" the chain .\tYucaipa bought it .\n')


def write(path, text):
    path.write_text(text)
    return path


# ---- known layouts --------------------------------------------------------------------------------------------------
def test_known_layouts_from_the_first_rows(tmp_path):
    assert known_layout(write(tmp_path / "mrpc.tsv", MRPC)) == "paraphrase"
    qqp = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tWhy?\tHow?\t0\n"
    assert known_layout(write(tmp_path / "qqp.tsv", qqp)) == "paraphrase"
    assert known_layout(write(tmp_path / "cola.tsv", COLA_RAW)) == "acceptability"
    assert known_layout(write(tmp_path / "cola.csv", "text,acceptability\nfine,1\n")) == "acceptability"
    stsb = "index\tgenre\tsentence1\tsentence2\tscore\n0\tmain\tA plane.\tAn air plane.\t5.000\n"
    assert known_layout(write(tmp_path / "stsb.tsv", stsb)) == "similarity"
    assert known_layout(write(tmp_path / "sst.tsv", "sentence\tlabel\nfine\t1\n")) is None
    assert known_layout(tmp_path / "missing.tsv") is None


# ---- headerless TSV and the header rule -----------------------------------------------------------------------------
COLA_SPEC = DataSpec(text_columns=("3",), label_column="1", header="no")


def test_headerless_raw_cola_by_index(tmp_path):
    path = write(tmp_path / "in_domain_train.tsv", COLA_RAW)
    examples = load_examples(path, COLA_SPEC)
    assert [e.label for e in examples] == [1, 0, 1, 0]
    assert examples[0].text == "Our friends won't buy this analysis, let alone the next one we propose."
    assert task_of(examples) == "classification"
    # auto finds no header (no known name; row 1's label field is a label) and reads the same
    assert load_examples(path, replace(COLA_SPEC, header="auto")) == examples
    # no flags at all: the raw CoLA layout is recognized, sentence 3 and label 1
    assert load_examples(path) == examples


def test_header_auto_rule(tmp_path):
    # 1. a column given by name: the first row is a header, whatever it holds
    custom = write(tmp_path / "custom.tsv", "body\tstars\nfine\t3\nbad\t1\n")
    assert load_examples(custom, DataSpec(text_columns=("body",), label_column="stars")) == [
        TextExample("fine", 3), TextExample("bad", 1)]
    # 2. a known column name in the first row
    assert load_examples(write(tmp_path / "k.tsv", "id\ttext\tlabel\n0\tfine\t1\n")) == [TextExample("fine", 1)]
    # 3. by index: row 1's label field is not a label while the next rows' are -> header
    headed = write(tmp_path / "headed.tsv", "source\tjudgement\tmark\tutterance\n" + COLA_RAW)
    by_index = DataSpec(text_columns=("3",), label_column="1")
    assert len(load_examples(headed, by_index)) == 4
    assert [e.label for e in load_examples(headed, replace(by_index, label_names=("bad", "good")))] == [1, 0, 1, 0]
    # ... and when it is a label, the first row is data
    assert len(load_examples(write(tmp_path / "plain.tsv", COLA_RAW), by_index)) == 4
    # 4. --header decides when given
    two = write(tmp_path / "two.tsv", "fine\t1\nbad\t0\n")
    assert load_examples(two, DataSpec(header="no")) == [TextExample("fine", 1), TextExample("bad", 0)]
    assert load_examples(two, DataSpec(header="yes", text_columns=("0",), label_column="1")) == [
        TextExample("bad", 0)]


def test_headerless_csv_and_single_sentence_rsplit(tmp_path):
    csv_path = write(tmp_path / "x.csv", '"good, really",1\nbad,0\n')
    assert load_examples(csv_path, DataSpec(header="no")) == [TextExample("good, really", 1), TextExample("bad", 0)]
    tsv = write(tmp_path / "x.tsv", "a \t tab inside\t1\nplain\t0\n")
    assert load_examples(tsv, DataSpec(header="no"))[0] == TextExample("a \t tab inside", 1)


# ---- quoting --------------------------------------------------------------------------------------------------------
def test_glue_tsv_with_stray_quotes_stays_raw(tmp_path):
    path = write(tmp_path / "mrpc.tsv", MRPC)
    assert not quoted_tsv(path.read_text())
    examples = load_examples(path)
    assert examples[0].text == 'Amrozi accused his brother , whom he called " the witness " .'
    assert examples[1] == TextExample('"Yucaipa owned Dominick \'s before selling" the chain .', 0,
                                      "Yucaipa bought it .")
    sst = write(tmp_path / "sst.tsv", 'sentence\tlabel\n"Title" is a good film\t1\nit \'s " fine\t0\n')
    assert [e.text for e in load_examples(sst)] == ['"Title" is a good film', 'it \'s " fine']


HF_QUOTED = ('sentence\tlabel\n"He said ""hi""\tthen left"\t1\n"two\nlines"\t0\nplain text\t1\n')


def test_csv_quoted_tsv_is_detected_or_chosen(tmp_path):
    path = write(tmp_path / "hf.tsv", HF_QUOTED)
    expected = [TextExample('He said "hi"\tthen left', 1), TextExample("two\nlines", 0), TextExample("plain text", 1)]
    assert quoted_tsv(HF_QUOTED)
    assert load_examples(path) == expected
    assert load_examples(path, DataSpec(tsv_quoting="csv")) == expected
    with pytest.raises(ValueError, match=r"hf.tsv:3: .*--tsv-quoting csv"):
        load_examples(path, DataSpec(tsv_quoting="none"))
    bad = write(tmp_path / "bad.tsv", 'sentence\tlabel\n"unterminated\t1\n')
    with pytest.raises(ValueError, match=r"bad.tsv:\d+: bad quoting .*--tsv-quoting none"):
        load_examples(bad, DataSpec(tsv_quoting="csv"))


def test_pandas_to_csv_round_trip(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"sentence": ['say "cheese"', "tab\there", "new\nline", "plain"], "label": [1, 0, 1, 0]})
    path = tmp_path / "export.tsv"
    frame.to_csv(path, sep="\t", index=False)
    assert [(e.text, e.label) for e in load_examples(path)] == list(zip(frame.sentence, frame.label))


# ---- JSON Lines classification ---------------------------------------------------------------------------------------
def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_classification_records(tmp_path):
    ints = jsonl(tmp_path / "a.jsonl", [{"sentence": "fine", "label": 1}, {"sentence": "bad", "label": 0}])
    assert load_examples(ints) == [TextExample("fine", 1), TextExample("bad", 0)]
    strings = jsonl(tmp_path / "b.jsonl", [{"text": "fine", "label": "pos"}, {"text": "bad", "label": "neg"}])
    assert [e.label for e in load_examples(strings)] == [1, 0]
    assert [e.label for e in load_examples(strings, label_names=["pos", "neg"])] == [0, 1]
    pairs = jsonl(tmp_path / "c.jsonl", [{"premise": "p", "hypothesis": "h", "label": "entailment"}])
    assert load_examples(pairs) == [TextExample("p", 0, "h")]
    assert sniff_task(pairs) == "classification"


def test_jsonl_errors_name_the_record(tmp_path):
    missing = jsonl(tmp_path / "m.jsonl", [{"sentence": "a", "label": 1}, {"sentence": "b"}])
    with pytest.raises(ValueError, match=r"m.jsonl: record 2 lacks label"):
        load_examples(missing)
    broken = write(tmp_path / "broken.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b", \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON Lines"):
        load_examples(broken)
    nolabel = jsonl(tmp_path / "n.jsonl", [{"sentence": "a"}])
    with pytest.raises(ValueError, match="no label column .*--label-column"):
        load_examples(nolabel)
    empty = jsonl(tmp_path / "e.jsonl", [{"sentence": "a", "label": ""}])
    with pytest.raises(ValueError, match=r"e.jsonl: record 1: empty label"):
        load_examples(empty, label_names=["x"])


# ---- float labels (regression) ------------------------------------------------------------------------------------
def stsb(path, n=200):
    rows = "".join(f"{i}\tmain\tA sentence {i}.\tAnother {i}.\t{(i * 37 % 51) / 10:.3f}\n" for i in range(n))
    return write(path, "index\tgenre\tsentence1\tsentence2\tscore\n" + rows)


def test_float_labels_load_for_regression_and_split(tmp_path):
    examples = load_examples(stsb(tmp_path / "stsb.tsv"))
    assert all(isinstance(e.label, float) for e in examples) and examples[1].label == 3.7
    assert task_of(examples) == "regression" and sniff_task(tmp_path / "stsb.tsv") == "regression"
    groups = groups_of(examples)
    assert len(set(groups)) == SCORE_BINS and max(Counter(groups).values()) <= 2 * len(examples) / SCORE_BINS
    parts = partition_indices(examples, 4, "dirichlet:0.5", seed=1)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(len(examples)))
    info = describe(examples)
    assert info["kind"] == "scores" and list(info["histogram"]) == ["0-1", "1-2", "2-3", "3-4", "4-5", "5-6"]
    skewed = partition(examples, 4, "dirichlet:0.1", seed=0)
    means = [sum(e.label for e in p) / len(p) for p in skewed]
    assert max(means) - min(means) > 0.5  # the split skews over the score bins


# ---- Parquet and save_to_disk folders ------------------------------------------------------------------------------
def test_parquet_classification_regression_and_instructions(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"sentence": ["fine", "bad"], "label": [1, 0]}), tmp_path / "c.parquet")
    assert load_examples(tmp_path / "c.parquet") == [TextExample("fine", 1), TextExample("bad", 0)]
    pq.write_table(pa.table({"sentence1": ["a"], "sentence2": ["b"], "score": [3.2]}), tmp_path / "r.parquet")
    assert load_examples(tmp_path / "r.parquet") == [TextExample("a", 3.2, "b")]
    assert sniff_task(tmp_path / "r.parquet") == "regression"
    pq.write_table(pa.table({"instruction": ["Add."], "input": ["1+1"], "output": ["2"]}), tmp_path / "i.parquet")
    assert load_examples(tmp_path / "i.parquet") == [InstructionExample("Add.", "2", "1+1", "")]
    assert sniff_task(tmp_path / "i.parquet") == "causal_lm"
    write(tmp_path / "junk.parquet", "not parquet")
    with pytest.raises(ValueError, match=r"junk.parquet: not a readable Parquet file"):
        load_examples(tmp_path / "junk.parquet")


def test_save_to_disk_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    train = datasets.Dataset.from_dict({"text": ["fine", "bad"] * 20, "label": [1, 0] * 20}, features=features)
    train.save_to_disk(str(tmp_path / "single"))
    examples = load_examples(tmp_path / "single")
    assert examples[:2] == [TextExample("fine", 1), TextExample("bad", 0)]  # ClassLabel integers stay integers
    # one dataset, not a folder of per-peer files
    assert [len(p) for p in split_for_peers(tmp_path / "single", 2, "iid")] == [20, 20]
    with pytest.raises(ValueError, match="one dataset"):
        split_for_peers(tmp_path / "single", 2, "files")
    datasets.DatasetDict({"train": train, "validation": train.select(range(4))}).save_to_disk(str(tmp_path / "dd"))
    assert load_examples(tmp_path / "dd") == examples
    assert len(load_examples(tmp_path / "dd" / "validation")) == 4
    datasets.DatasetDict({"test": train}).save_to_disk(str(tmp_path / "only_test"))
    with pytest.raises(ValueError, match=r"without a 'train' split \(it has test\)"):
        load_examples(tmp_path / "only_test")
    instructions = datasets.Dataset.from_dict({"instruction": ["Add."], "response": ["2"], "category": ["math"]})
    instructions.save_to_disk(str(tmp_path / "inst"))
    assert load_examples(tmp_path / "inst") == [InstructionExample("Add.", "2", "", "math")]
    assert sniff_task(tmp_path / "inst") == "causal_lm"


def test_parquet_per_peer_files_and_held_out(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    for name in ("shard_0.parquet", "shard_1.parquet", "global_test.parquet"):
        pq.write_table(pa.table({"sentence": [name] * 3, "label": [0, 1, 0]}), tmp_path / name)
    assert [p.name for p in presplit_files(tmp_path)] == ["shard_0.parquet", "shard_1.parquet"]
    assert held_out_file(tmp_path).name == "global_test.parquet"
    assert [len(p) for p in split_for_peers(tmp_path, 2, "files")] == [3, 3]


def test_without_the_data_extra_one_line_says_how_to_install(tmp_path, monkeypatch):
    write(tmp_path / "x.parquet", "whatever")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ValueError, match=r"x.parquet: reading it needs the pyarrow library; pip install -e \.\[data"):
        load_examples(tmp_path / "x.parquet")


# ---- errors ----------------------------------------------------------------------------------------------------------
def test_every_error_names_the_file_and_the_fix(tmp_path):
    unknown = write(tmp_path / "u.tsv", "alpha\tbeta\tgamma\n1\t2\t3\n")
    with pytest.raises(ValueError, match=r"u.tsv:1: no header row with known column names.*--text-columns"):
        load_examples(unknown)
    cola = write(tmp_path / "cola.tsv", COLA_RAW)
    with pytest.raises(ValueError, match=r"cola.tsv: column index 7 is out of range.*0..3"):
        load_examples(cola, DataSpec(text_columns=("7",), label_column="1", header="no"))
    with pytest.raises(ValueError, match=r"given by name but the file has no header row"):
        load_examples(cola, DataSpec(text_columns=("sentence",), label_column="1", header="no"))
    ragged = write(tmp_path / "ragged.tsv", COLA_RAW + "gj04\t1\tonly three\n")
    with pytest.raises(ValueError, match=r"ragged.tsv:5: 3 fields, the first rows have 4"):
        load_examples(ragged, COLA_SPEC)
    names = write(tmp_path / "n.tsv", "sentence\tlabel\na\tpos\nb\tmaybe\n")
    with pytest.raises(ValueError, match=r"n.tsv:3: label 'maybe' is not one of \['neg', 'pos'\]; fix"):
        load_examples(names, label_names=["neg", "pos"])
    empty = write(tmp_path / "empty.csv", "")
    with pytest.raises(ValueError, match=r"empty.csv: empty file"):
        load_examples(empty)
    with pytest.raises(ValueError, match=r"latin.tsv: not UTF-8"):
        (tmp_path / "latin.tsv").write_bytes("sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"))
        load_examples(tmp_path / "latin.tsv")


def test_task_auto_sniffs_the_first_rows(tmp_path):
    from declora.config import resolve
    from declora.node.workload import resolve_task

    cola = write(tmp_path / "cola.tsv", COLA_RAW)
    assert resolve_task(resolve(model="tiny-bert", data=str(cola), eval_data=str(cola))) == "classification"
    reg = stsb(tmp_path / "stsb.tsv")
    assert resolve_task(resolve(model="tiny-bert", data=str(reg), eval_data=str(reg))) == "regression"
    inst = jsonl(tmp_path / "inst.jsonl", [{"instruction": "Add.", "output": "2"}])
    assert resolve_task(resolve(model="tiny-bert", data=str(inst), eval_data=str(inst))) == "causal_lm"


# ---- through the command line: one line, exit 2, before any process starts --------------------------------------------
def one_line_error(capsys, argv: list[str]) -> str:
    from declora.cli import main

    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_cli_data_errors_are_one_line(capsys, tmp_path):
    base = ["simulate", "--model", "tiny-bert", "--peers", "2", "--out", str(tmp_path / "run")]
    ragged = write(tmp_path / "ragged.tsv", COLA_RAW + "gj04\t1\tonly three\n")
    err = one_line_error(capsys, [*base, "--data", str(ragged), "--eval-data", str(ragged), "--header", "no",
                                  "--text-columns", "3", "--label-column", "1"])
    assert f"{ragged}:5: 3 fields" in err
    err = one_line_error(capsys, [*base, "--header", "no", "--text-columns", "sentence"])
    assert "--header no: give columns by 0-based index" in err
    err = one_line_error(capsys, [*base, "--label-names", "a,a"])
    assert "--label-names must be distinct" in err
    scores = stsb(tmp_path / "stsb.tsv")
    err = one_line_error(capsys, [*base, "--data", str(scores), "--eval-data", str(scores), "--task", "classification"])
    assert "non-integer numbers" in err and "--task regression" in err
    jl = jsonl(tmp_path / "m.jsonl", [{"sentence": "a", "label": 1}, {"sentence": "b"}])
    err = one_line_error(capsys, [*base, "--data", str(jl), "--eval-data", str(jl)])
    assert f"{jl}: record 2 lacks label" in err

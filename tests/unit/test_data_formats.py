"""Bring-your-own-data formats: headerless and CSV-quoted TSV, JSONL classification, Parquet, save_to_disk folders,
float (regression) labels, the known GLUE layouts, and the one-line errors of every loader."""
from __future__ import annotations

import pytest

from declora.learn.examples import known_layout

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

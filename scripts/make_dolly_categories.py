"""The second task of the convergence benchmarks (issue 15): classify a Dolly-15k instruction into its category.

8 classes of very different sizes (open_qa 3,742 ... creative_writing 709): a skew of another kind than SST-2's two
balanced classes. Reads the Dolly file that `../shared/data` holds (nothing is downloaded) and writes, into OUT:

- train.jsonl: every record not in dev, as {"text": instruction [+ " | " + the first 200 characters of the context],
  "label": category}. The context is part of the text because whether there is one tells closed_qa,
  information_extraction and summarization from the others, as it would tell a person.
- dev.jsonl: 100 records per category, drawn with --seed (800 in all), the final report's set.
- labels.txt: the category names in label order, for --label-names.

    python scripts/make_dolly_categories.py [--dolly ../shared/data/dolly-15k/databricks-dolly-15k.jsonl]
                                            [--out runs/data/dolly_categories] [--seed 0]

then e.g. `declora simulate --data OUT/train.jsonl --eval-data OUT/dev.jsonl --num-labels 8
--label-names "$(cat OUT/labels.txt)"`.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DOLLY = ROOT.parent / "shared" / "data" / "dolly-15k" / "databricks-dolly-15k.jsonl"
DEV_PER_CATEGORY = 100


def examples(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        if not isinstance(r, dict) or not r.get("instruction") or not r.get("category"):
            raise ValueError(f"{path}:{n}: not a Dolly record (needs instruction and category)")
        context = " ".join(str(r.get("context") or "").split())[:200]
        rows.append({"text": " ".join(r["instruction"].split()) + (f" | {context}" if context else ""),
                     "label": r["category"]})
    return rows


def split(rows: list[dict], seed: int) -> tuple[list[dict], list[dict], list[str]]:
    labels = sorted({r["label"] for r in rows})
    rng = random.Random(seed)
    dev_ids: set[int] = set()
    for label in labels:
        ids = [i for i, r in enumerate(rows) if r["label"] == label]
        dev_ids.update(rng.sample(ids, min(DEV_PER_CATEGORY, len(ids) // 2)))
    train = [r for i, r in enumerate(rows) if i not in dev_ids]
    dev = [rows[i] for i in sorted(dev_ids)]
    return train, dev, labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dolly", default=str(DEFAULT_DOLLY), help="databricks-dolly-15k.jsonl")
    p.add_argument("--out", default=str(ROOT / "runs" / "data" / "dolly_categories"))
    p.add_argument("--seed", type=int, default=0, help="draws the dev set")
    args = p.parse_args(argv)
    src = Path(args.dolly)
    if not src.is_file():
        print(f"make_dolly_categories: error: {src}: no such file; give --dolly the databricks-dolly-15k.jsonl "
              f"that ../shared/data/dolly-15k holds", file=sys.stderr)
        return 2
    try:
        train, dev, labels = split(examples(src), args.seed)
    except (ValueError, json.JSONDecodeError) as e:
        print(f"make_dolly_categories: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("dev", dev)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (out / "labels.txt").write_text(",".join(labels) + "\n")
    print(f"wrote {out}: {len(train)} train, {len(dev)} dev, {len(labels)} categories ({','.join(labels)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

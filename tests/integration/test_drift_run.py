"""Drift correction in the real peer loop (in-process network, tiny BERT): what each rule sends, what it keeps
frozen, that it resumes exactly, and that it runs behind the parameter server (K-GT there is SCAFFOLD)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tests.golden.scenarios import COMMON, adapter_state_tensors, tensor_hash, write_data


def run(tmp_path: Path, name: str, **overrides) -> Path:
    from declora.config import resolve
    from declora.node.inprocess import run_in_process

    out = tmp_path / name
    cfg = resolve(**{**COMMON, "codec": "fp32", "data": str(write_data(tmp_path / "data")),
                     "eval_data": str(tmp_path / "data" / "sentiment.tsv"), "out": str(out), **overrides})
    run_in_process(cfg)
    return out


def records(out: Path, peer: int) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics" / f"peer-{peer}.jsonl").read_text().splitlines()]


def checkpoint(out: Path, peer: int, t: int) -> dict:
    return torch.load(out / "checkpoints" / f"peer-{peer}" / f"round-{t}.pt", map_location="cpu", weights_only=True)


def test_kgt_sends_model_and_displacement_and_ffa_sends_no_a(tmp_path):
    plain, kgt, ffa = (run(tmp_path, d, drift=d) for d in ("none", "kgt", "ffa"))
    sent = {name: sum(r["bytes_sent"] for r in records(out, 0)) for name, out in
            (("none", plain), ("kgt", kgt), ("ffa", ffa))}
    assert 1.9 < sent["kgt"] / sent["none"] < 2.05, sent  # both halves in one message: one header less
    assert sent["ffa"] < 0.6 * sent["none"], sent  # B and the head; tiny BERT's A (r x 32) is as large as B
    # FFA: every peer's A is still the run's shared initial A after 3 rounds of training and mixing.
    first = [checkpoint(ffa, p, 0)["adapter"]["factors"] for p in range(3)]
    last = [checkpoint(ffa, p, 2)["adapter"]["factors"] for p in range(3)]
    for key in first[0]:
        assert all(torch.equal(f[key]["A"], first[0][key]["A"]) for f in first + last)
        assert not torch.equal(last[0][key]["B"], first[0][key]["B"])  # B did train
    # K-GT's correction is in the checkpoint, and it is not zero.
    corr = checkpoint(kgt, 1, 2)["neighbourhood"]["drift"]["correction"]
    assert any(float(f["B"].abs().max()) > 0 for f in corr["factors"].values())


@pytest.mark.parametrize("drift", ["kgt", "nesterov"])
def test_drift_state_resumes_exactly(tmp_path, drift):
    unbroken = run(tmp_path, f"{drift}-unbroken", drift=drift)
    broken = run(tmp_path, f"{drift}-broken", drift=drift)
    for ckpt in (broken / "checkpoints").glob("peer-*/round-2.pt"):
        ckpt.unlink()  # a kill between round 1's checkpoint and round 2's
    from declora.config import resolve
    from declora.node.inprocess import run_in_process

    run_in_process(dataclasses.replace(resolve(**{**COMMON, "codec": "fp32", "drift": drift,
                                                  "data": str(tmp_path / "data" / "sentiment.tsv"),
                                                  "eval_data": str(tmp_path / "data" / "sentiment.tsv"),
                                                  "out": str(broken)}), resume=True))
    for p in range(3):
        a, b = checkpoint(unbroken, p, 2), checkpoint(broken, p, 2)
        assert tensor_hash(adapter_state_tensors(a["adapter"])) == tensor_hash(adapter_state_tensors(b["adapter"]))


def test_scaffold_behind_the_server(tmp_path):
    """--server fedit --drift kgt: clients send model and displacement, the server averages both, each client's
    correction becomes the mean displacement minus its own (SCAFFOLD)."""
    plain, scaffold = run(tmp_path, "fedit", server="fedit"), run(tmp_path, "scaffold", server="fedit", drift="kgt")
    up = {name: sum(r["bytes_sent"] for r in records(out, 0)) for name, out in (("fedit", plain), ("kgt", scaffold))}
    assert 1.9 < up["kgt"] / up["fedit"] < 2.05, up
    finals = [checkpoint(scaffold, p, 2) for p in range(3)]
    # Every client loads the same aggregate, and the data-share-weighted corrections cancel.
    assert len({tensor_hash(adapter_state_tensors(c["adapter"])) for c in finals}) == 1
    corrections = [adapter_state_tensors(c["neighbourhood"]["drift"]["correction"]) for c in finals]
    largest = max(float(t.norm()) for c in corrections for t in c.values())
    total = max(float(sum(c[k] for c in corrections).norm()) for k in corrections[0])
    assert largest > 0 and total < 0.05 * largest, (total, largest)  # the shards differ by at most one example
    server = [json.loads(x) for x in (scaffold / "metrics" / "server.jsonl").read_text().splitlines()]
    assert all(r["clients_heard"] == 3 and not r["updates_dropped"] for r in server)


def test_independent_init_gives_each_peer_its_own_adapter(tmp_path):
    """--independent-init (issue 15, part 4): peers start from adapters of their own; the default shares one."""
    from declora.config import resolve
    from declora.node.workload import build_learner

    data = str(write_data(tmp_path / "data"))
    cfgs = {flag: resolve(**{**COMMON, "data": data, "eval_data": data, "out": str(tmp_path / str(flag)),
                             "mode": "svd", "ranks": "4", "independent_init": flag}) for flag in (False, True)}
    first_A = {flag: [next(iter(build_learner(cfg, i).adapter().factors.values())).A for i in range(2)]
               for flag, cfg in cfgs.items()}
    assert torch.equal(first_A[False][0], first_A[False][1])
    assert not torch.equal(first_A[True][0], first_A[True][1])

"""The parameter-server baseline does not trust its clients: the layout of every update and each client's weight
come from the run config, so a client that sends the wrong rank or claims 2**62 samples is dropped and counted,
and the others still get their aggregate every round. The real `run_server` over the in-process network."""
from __future__ import annotations

import json
import threading

from declora.config import resolve
from declora.learn.model import build_model, read_adapter
from declora.node.server import run_server
from declora.node.workload import model_spec, server_expectations
from declora.wire.adapter_messages import encode_adapter
from declora.wire.inproc import InProcNetwork
from declora.wire.liveness import Liveness
from declora.wire.protocol import Kind, make_message
from tests.tiny_models import sentiment_rows, write_sst_tsv


def test_a_lying_client_is_dropped_and_the_round_goes_on(tmp_path):
    data = write_sst_tsv(tmp_path / "train.tsv", sentiment_rows(repeat=3))
    cfg = resolve(model="tiny-bert", data=str(data), eval_data=str(data), peers=3, server="fedit", ranks="4",
                  rounds=2, partition="iid", out=str(tmp_path / "run"), deadline_s=20.0, start_timeout_s=20.0)
    layout, samples = server_expectations(cfg)
    net, liveness = InProcNetwork(), Liveness(0.5, 20)
    server = net.transport(3, [0, 1, 2], layout=layout, liveness=liveness)
    thread = threading.Thread(target=run_server, args=(cfg, server, layout, samples))
    thread.start()
    model, _ = build_model(model_spec(cfg), 4, cfg.alpha, seed=0)
    honest = encode_adapter(read_adapter(model), "fp32")
    model2, _ = build_model(model_spec(cfg), 2, cfg.alpha, seed=0)
    wrong_rank = encode_adapter(read_adapter(model2), "fp32")
    lies = {0: (wrong_rank, samples[2]), 1: (honest, 2**62)}

    clients = {j: net.transport(j, [3], liveness=liveness).start() for j in range(3)}
    got = {0: [], 1: []}
    for t in range(2):
        for j, c in clients.items():
            tensors, n = lies[t] if j == 2 else (honest, samples[j])
            c.send(3, make_message(Kind.UPDATE, j, t, tensors, body={"samples": n}))
        for j in (0, 1):
            got[j].append(len(clients[j].collect(t, Kind.AGGREGATE, {3}, 20.0).received))
    thread.join(timeout=30)
    for c in clients.values():
        c.close()

    assert not thread.is_alive()
    assert got == {0: [1, 1], 1: [1, 1]}  # the honest clients got their aggregate every round
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics" / "server.jsonl").read_text().splitlines()]
    assert [r["clients_heard"] for r in rows] == [2, 2]
    assert [r["updates_dropped"] for r in rows] == [{"rank": 1}, {"samples": 1}]

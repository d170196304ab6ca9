"""Reading the launcher's slot from torchrun's and SLURM's variables, and the card exchange through a real TCPStore."""
from __future__ import annotations

import threading

import pytest

from declora.config import ConfigError
from declora.node.addressbook import free_loopback_ports
from declora.node.rendezvous import (Slot, exchange_cards, first_slurm_host, gather_metrics, launcher_slot,
                                     open_store, publish_metrics)


def test_torchrun_slot_with_and_without_the_agent_store():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500",
           "TORCHELASTIC_RUN_ID": "job7", "TORCHELASTIC_USE_AGENT_STORE": "True"}
    assert launcher_slot(env) == Slot("torchrun", 3, 4, 1, "10.0.0.5", 29500, False, "job7")
    env.update(RANK="0")
    assert launcher_slot(env).hosts_store is False  # the agent hosts it
    env.pop("TORCHELASTIC_USE_AGENT_STORE")
    assert launcher_slot(env).hosts_store is True  # rank 0 hosts it


def test_slurm_slot_and_node_lists(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)  # parse without scontrol
    env = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "123",
           "SLURM_JOB_NODELIST": "gpu[07-09,12],cpu1"}
    slot = launcher_slot(env)
    assert (slot.launcher, slot.rank, slot.world, slot.store_host, slot.hosts_store) == ("slurm", 2, 4, "gpu07", False)
    assert slot.store_port == 29600 + 123 and slot.run_id == "slurm-123.0"
    assert launcher_slot({**env, "DECLORA_STORE_PORT": "4000"}).store_port == 4000
    assert first_slurm_host("node1,node2") == "node1" and first_slurm_host("n[3]") == "n3"
    assert launcher_slot({}) is None
    with pytest.raises(ConfigError, match="not integers"):
        launcher_slot({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"})


def test_cards_and_metrics_go_through_a_real_store():
    port = free_loopback_ports(1)[0]
    slots = [Slot("slurm", r, 3, r, "127.0.0.1", port, r == 0, "t") for r in range(3)]
    stores = [open_store(slots[0], 10)] + [open_store(s, 10) for s in slots[1:]]
    results = {}

    def publish(r):
        results[r] = exchange_cards(stores[r], slots[r], {"endpoint": f"tcp://127.0.0.1:{1000 + r}",
                                                          "public_key": f"key{r}"}, 10)

    threads = [threading.Thread(target=publish, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {r: {"endpoint": f"tcp://127.0.0.1:{1000 + r}", "public_key": f"key{r}"} for r in range(3)}
    assert results == {0: expected, 1: expected, 2: expected}
    publish_metrics(stores[1], 1, '{"round": 0}\n')
    assert gather_metrics(stores[0], 3, timeout_s=0.5) == {1: '{"round": 0}\n'}  # 0 and 2 never published

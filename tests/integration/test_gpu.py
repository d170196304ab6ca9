"""The CUDA path for real (issue 12): marked `gpu`, skipped without CUDA (tests/conftest.py), run on a GPU machine by
scripts/gpu_check.sh. A bf16 base with fp32 factors trains and its adapter reads back on the CPU; a 4-bit base
(bitsandbytes) loads, trains and keeps the wire format; peers of one process share one base on a GPU; the launcher's
fit check reads the real free memory; a three-peer gossip run over real ZeroMQ trains on the GPU."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from declora.config import ConfigError, RunConfig
from declora.learn.model import ModelSpec, build_model, read_adapter
from declora.learn.training import forward_context

pytestmark = pytest.mark.gpu
LLAMA = ModelSpec(path="tiny-llama", task="causal_lm")


def one_step(model) -> float:
    ids = torch.randint(3, 200, (2, 16), device=next(model.parameters()).device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with forward_context(model):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    return float(loss.detach())


def test_bf16_base_with_fp32_factors_trains_on_cuda():
    model, _ = build_model(LLAMA, 4, 8.0, device="cuda:0")
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    before = read_adapter(model)
    assert torch.isfinite(torch.tensor(one_step(model)))
    after = read_adapter(model)
    key = next(iter(after.factors))
    assert not torch.equal(before.factors[key].B, after.factors[key].B)


def saved_tiny_llama(folder):
    model, tokenizer = build_model(LLAMA, 4, 8.0)
    base = model.merge_and_unload()
    base.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (.[gpu4bit])")
def test_4bit_base_loads_trains_and_keeps_fp32_factors(tmp_path):
    from declora.learn.model import merge_delta_and_reset

    folder = saved_tiny_llama(tmp_path / "llama")
    spec = ModelSpec(path=str(folder), task="causal_lm", base_4bit=True)
    model, _ = build_model(spec, 4, 8.0, device="cuda:0")
    packed = [p for p in model.parameters() if p.dtype == torch.uint8]
    assert packed, "no 4-bit weights"
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert torch.isfinite(torch.tensor(one_step(model)))
    adapter = read_adapter(model)
    plain = read_adapter(build_model(ModelSpec(path=str(folder), task="causal_lm"), 4, 8.0)[0])
    assert adapter.factors.keys() == plain.factors.keys()  # the same modules on the wire
    assert all(adapter.factors[k].A.shape == plain.factors[k].A.shape for k in plain.factors)
    with pytest.raises(ValueError, match="4 bits"):
        merge_delta_and_reset(model, {k: torch.zeros(f.B.shape[0], f.A.shape[1]) for k, f in adapter.factors.items()},
                              rank=4)


def test_peers_of_a_process_share_one_base_on_the_gpu():
    from declora.learn.shared_base import share_frozen_weights

    first, _ = build_model(LLAMA, 4, 8.0, device="cuda:0")
    second, _ = build_model(LLAMA, 4, 8.0, device="cuda:0")
    assert share_frozen_weights(second, first) > 0
    assert one_step(second) > 0 and one_step(first) > 0


def test_fit_check_reads_the_real_free_memory():
    from declora.node.gpu_fit import check_gpu_fit, free_gpu_memory

    free = free_gpu_memory()
    assert len(free) == torch.cuda.device_count() and all(f > 0 for f in free)
    check_gpu_fit(RunConfig(model="tiny-llama", task="causal_lm", peers=2), [[0], [1]])
    with pytest.raises(ConfigError, match="will not fit"):
        huge = RunConfig(model="tiny-llama", task="causal_lm", peers=2, max_length=2048, batch_size=1 << 20)
        check_gpu_fit(huge, [[0], [1]])


@pytest.mark.slow
def test_three_peers_gossip_on_the_gpu(tmp_path):
    from tests.integration.test_simulate import ok, simulate

    from tests.integration.test_simulate import DOLLY

    proc, out = simulate(tmp_path, "--model", "tiny-llama", "--data", str(DOLLY), "--partition", "files",
                         "--peers", "3", "--rounds", "2", "--local-steps", "2", "--batch-size", "4",
                         "--max-length", "64", "--gpus", "0")
    ok(proc)
    assert "on cuda:0" in (out / "logs" / "peer-0.log").read_text()
    records = [json.loads(line) for line in (out / "metrics" / "peer-1.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1] and records[-1]["neighbours_heard"] == 2

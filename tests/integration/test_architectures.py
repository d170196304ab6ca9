"""Every supported architecture trains and gossips: a tiny model of each (built from a config, no checkpoint) runs one
round with two peers through the real peer loop (in process), and the LoRA targets are peft's for its model type.

Encoders run classification; decoders run causal_lm on Dolly-like records, and GPT-2 (Conv1D, no pad token) also
classification with a score head. With the fp32 codec and two peers each mixing half-half, both peers must end
with the same adapter although each trained on its own half of the data: that is what proves the adapters mixed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from declora.learn.tiny_models import DECODERS, ENCODERS, TINY_MODELS
from tests.tiny_models import need_tiny_gpt2, write_dolly_json, write_sst_tsv

# peft's table (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING) as of peft 0.21, written out so that a peft
# upgrade that changes a default shows up here. DistilBERT has no entry there: model.TARGETS_PEFT_LACKS supplies it.
PEFT_TARGETS = {
    "bert": ["query", "value"], "roberta": ["query", "value"], "deberta-v2": ["query_proj", "value_proj"],
    "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"], "gpt_neox": ["query_key_value"], "opt": ["q_proj", "v_proj"],
}
MODEL_TYPE = {"tiny-bert": "bert", "tiny-roberta": "roberta", "tiny-distilbert": "distilbert",
              "tiny-deberta-v2": "deberta-v2", "tiny-gpt2": "gpt2", "tiny-llama": "llama", "tiny-mistral": "mistral",
              "tiny-qwen2": "qwen2", "tiny-gpt-neox": "gpt_neox", "tiny-opt": "opt"}
DISTILBERT_TARGETS = ["q_lin", "v_lin"]

CASES = ([(m, "classification") for m in ENCODERS] + [(m, "causal_lm") for m in DECODERS]
         + [("tiny-gpt2", "classification")])


def test_every_tiny_model_is_covered():
    assert sorted(MODEL_TYPE) == sorted(TINY_MODELS)
    assert {m for m, _ in CASES} == set(TINY_MODELS)


def run_one_round(tmp_path: Path, model: str, task: str, target_modules: str = "") -> Path:
    from declora.config import resolve
    from declora.node.inprocess import run_in_process

    data = (write_sst_tsv(tmp_path / "sst.tsv") if task == "classification"
            else write_dolly_json(tmp_path / "dolly.json"))
    out = tmp_path / "run"
    cfg = resolve(model=model, task=task, data=str(data), eval_data=str(data), target_modules=target_modules,
                  peers=2, topology="ring", mode="gossip", codec="fp32", rounds=1, local_steps=1, batch_size=2,
                  max_length=32, partition="iid", ranks="2", eval_every=1, eval_samples=4, threads=1,
                  keep_checkpoints=0, deadline_s=60.0, start_timeout_s=60.0, seed=0, out=str(out))
    run_in_process(cfg, wire="inproc")
    return out


def check_round(out: Path, targets: list[str]) -> None:
    """One round ran for both peers, both saved an adapter on `targets`, and the adapters mixed."""
    import torch
    from safetensors.torch import load_file

    saved = []
    for peer in (0, 1):
        rows = [json.loads(line) for line in (out / "metrics" / f"peer-{peer}.jsonl").read_text().splitlines()
                if line.strip()]
        assert len(rows) == 1, rows
        row = rows[0]
        assert row["round"] == 0 and math.isfinite(row["train_loss"]), row
        assert row["bytes_sent"] > 0 and row["neighbours_heard"] == 1, row
        assert row["distance_to_neighbours"] > 0, row  # before the mix, the two halves of the data disagreed
        folder = out / "adapters" / f"peer-{peer}"
        config = json.loads((folder / "adapter_config.json").read_text())
        assert sorted(config["target_modules"]) == sorted(targets)
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        assert tensors and all(torch.isfinite(t).all() for t in tensors.values())
        assert any(k.endswith("lora_B.weight") and t.abs().max() > 0 for k, t in tensors.items()), "B never trained"
        assert {k.split(".lora_A.")[0].rsplit(".", 1)[-1] for k in tensors if ".lora_A." in k} == set(targets)
        saved.append(tensors)
    assert saved[0].keys() == saved[1].keys()
    for key in saved[0]:  # fp32 wire, weights 1/2 and 1/2: the same mix on both sides
        torch.testing.assert_close(saved[0][key], saved[1][key], rtol=1e-6, atol=1e-7, msg=f"{key} did not mix")


@pytest.mark.parametrize(("model", "task"), CASES, ids=[f"{m}-{t}" for m, t in CASES])
def test_one_gossip_round_on_each_architecture(model, task, tmp_path):
    out = run_one_round(tmp_path, model, task)
    check_round(out, DISTILBERT_TARGETS if model == "tiny-distilbert" else PEFT_TARGETS[MODEL_TYPE[model]])


@pytest.mark.slow
def test_one_gossip_round_on_the_real_tiny_gpt2_checkpoint(tmp_path):
    out = run_one_round(tmp_path, str(need_tiny_gpt2()), "causal_lm")
    check_round(out, PEFT_TARGETS["gpt2"])


# ---- default_targets: peft's table, or the one-line error ----------------------------------------------------------
@pytest.mark.parametrize("model", TINY_MODELS)
def test_default_targets_are_pefts_entry_for_the_model_type(model):
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_table

    from declora.learn.model import ModelSpec, build_base, default_targets

    task = "classification" if model in ENCODERS else "causal_lm"
    base, _ = build_base(ModelSpec(path=model, task=task))
    model_type = base.config.model_type
    assert model_type == MODEL_TYPE[model]
    if model_type not in PEFT_TARGETS:  # DistilBERT: not in peft's table, so ours
        assert model_type not in peft_table
        assert default_targets(base) == DISTILBERT_TARGETS
        return
    assert default_targets(base) == list(peft_table[model_type]) == PEFT_TARGETS[model_type]


def test_a_model_type_nobody_knows_is_a_one_line_error():
    from declora.learn.model import ModelSpec, build_base, default_targets

    base, _ = build_base(ModelSpec(path="tiny-distilbert"))
    base.config.model_type = "mystery"
    with pytest.raises(ValueError, match=r"no default LoRA target modules for model type 'mystery'") as e:
        default_targets(base)
    assert "\n" not in str(e.value) and "q_lin, v_lin" in str(e.value)


def test_bert_targets_keep_their_order():
    """The golden hashes were recorded with query, value in this order."""
    from declora.learn.model import ModelSpec, build_base, default_targets

    assert default_targets(build_base(ModelSpec(path="tiny-bert"))[0]) == ["query", "value"]


def test_target_modules_override_the_table():
    from declora.learn.model import ModelSpec, build_model, lora_layers

    model, _ = build_model(ModelSpec(path="tiny-llama", task="causal_lm", target_modules=("k_proj", "o_proj")),
                           rank=2, alpha=4)
    assert {k.rsplit(".", 1)[-1] for k in lora_layers(model)} == {"k_proj", "o_proj"}
    distil, _ = build_model(ModelSpec(path="tiny-distilbert", target_modules=tuple(DISTILBERT_TARGETS)), rank=2, alpha=4)
    assert {k.rsplit(".", 1)[-1] for k in lora_layers(distil)} == set(DISTILBERT_TARGETS)


def test_gpt2_conv1d_targets_are_fan_in_fan_out_and_get_a_pad_token():
    from declora.learn.model import ModelSpec, build_model

    model, tokenizer = build_model(ModelSpec(path="tiny-gpt2", task="classification"), rank=2, alpha=4)
    assert model.peft_config["default"].fan_in_fan_out
    assert tokenizer.pad_token == tokenizer.eos_token and model.config.pad_token_id == tokenizer.eos_token_id

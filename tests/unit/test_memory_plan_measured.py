"""The activation estimate of learn.memory_plan against what autograd really keeps for backward in one LoRA training
step on the CPU (fp32): every tensor saved for backward, counted once per storage, parameters excluded. The estimate
must not be under what is kept (a plan that is short crashes a run) nor more than 1.5x over it."""
from __future__ import annotations

import pytest
import torch

from declora.learn import memory_plan as mp

FACTOR = 1.5


def saved_bytes(model, batch) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss.backward()
    return sum(seen.values())


def build(kind: str):
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    if kind == "llama":
        config = tf.LlamaConfig(vocab_size=500, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
        task, targets, cls = "causal_lm", ["q_proj", "v_proj"], tf.LlamaForCausalLM
    else:
        config = tf.BertConfig(vocab_size=500, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                               num_attention_heads=4)
        task, targets, cls = "classification", ["query", "value"], tf.BertForSequenceClassification
    torch.manual_seed(0)
    model = get_peft_model(cls(config), LoraConfig(r=8, target_modules=targets,
                                                   task_type="CAUSAL_LM" if task == "causal_lm" else "SEQ_CLS"))
    return model, mp.shape_of(config, task, 8, targets)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")
@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("batch,seq", [(4, 64), (2, 128)])
def test_activation_estimate_is_within_a_factor_of_what_autograd_keeps(kind, batch, seq):
    torch.set_num_threads(1)
    model, shape = build(kind)
    ids = torch.randint(0, 500, (batch, seq))
    labels = ids if kind == "llama" else torch.zeros(batch, dtype=torch.long)
    measured = saved_bytes(model, {"input_ids": ids, "labels": labels})
    # PyTorch's CPU path materializes BERT's attention matrix (softmax, dropout mask and output); LLaMA's is fused.
    estimate = mp.saved_activation_bytes(shape, batch, seq, act_bytes=4, attention_matrix=kind == "bert")
    print(f"{kind} batch {batch} x {seq}: estimate / measured = {estimate / measured:.2f}")
    assert measured <= estimate <= FACTOR * measured, (measured, estimate)

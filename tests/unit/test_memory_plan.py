"""The GPU memory plan (learn.memory_plan) against figures computed by hand, the launcher's fit check
(node.gpu_fit) with given free memory, and the 4-bit base's config rules. All on the CPU."""
from __future__ import annotations

import pytest

from declora.cli import main
from declora.config import ConfigError, RunConfig
from declora.learn import memory_plan as mp
from declora.learn.model import ModelSpec
from declora.learn.quantized import GPU4BIT_HINT, base_4bit_problem
from declora.node.gpu_fit import check_gpu_fit

# A made-up shape whose figures are easy to follow by hand.
SHAPE = mp.ModelShape(linear_params=1000, other_params=200, trainable_params=50, hidden=4, layers=2, heads=2,
                      intermediate=8, vocab=10, causal_lm=True)
MIB = 1 << 20


def test_base_bytes_by_dtype():
    assert mp.base_bytes(SHAPE, "float32") == 1200 * 4
    assert mp.base_bytes(SHAPE, "bfloat16") == 1200 * 2
    # NF4: half a byte per linear weight plus a 4-byte absmax per 64 weights; the rest stays bf16.
    assert mp.base_bytes(SHAPE, "nf4") == 1000 * (0.5 + 4 / 64) + 200 * 2


def test_trainable_bytes_are_factor_grad_and_two_adam_moments_in_fp32():
    assert mp.trainable_bytes(SHAPE) == 50 * 4 * 4


def test_saved_activations_by_hand():
    # per token and layer 8*4 + 3*8 = 56 words; 3 sequences of 5 tokens, 2 layers, bf16: 3*5*2*56*2 = 3360;
    # logits 3*5*10 in bf16 plus their fp32 copy: 150 * (2 + 4) = 900.
    assert mp.saved_activation_bytes(SHAPE, batch=3, seq=5, act_bytes=2) == 3360 + 900
    # a materialized attention matrix adds 3 * heads * seq words per token and layer: 3*2*5 = 30 -> 3*5*2*30*2 = 1800
    assert mp.saved_activation_bytes(SHAPE, 3, 5, 2, attention_matrix=True) == 3360 + 900 + 1800
    # in fp32 the logits are not copied for the loss
    assert mp.saved_activation_bytes(SHAPE, 3, 5, 4) == 3360 * 2 + 150 * 4


def test_activation_peak_is_the_larger_of_training_and_evaluation():
    train = 3360 + 900 + 150 * 4  # saved tensors and the logits' fp32 gradient
    evaluation = 64 * 5 * 56 * 2 + 64 * 5 * 10 * 6  # the evaluation batch is at least 64
    assert mp.activation_peak_bytes(SHAPE, 3, 5, 2) == max(train, evaluation) == evaluation
    assert mp.activation_peak_bytes(SHAPE, 3, 5, 2, eval_batch=1) == train


def test_process_plan_holds_the_base_and_activations_once_and_adapters_per_peer():
    one, many = mp.process_plan(SHAPE, 1, 3, 5, "bfloat16"), mp.process_plan(SHAPE, 8, 3, 5, "bfloat16")
    assert many.base == one.base == 2400 and many.activations == one.activations
    assert many.trainable == 8 * one.trainable
    assert one.total == pytest.approx((2400 + 800 + one.activations + mp.CUDA_CONTEXT_BYTES) * mp.HEADROOM)


def test_gpu_of_places_processes_round_robin_and_a_process_on_one_gpu():
    assert [mp.gpu_of(i, 1, 2) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [mp.gpu_of(i, 4, 2) for i in range(12)] == [0] * 4 + [1] * 4 + [0] * 4


def test_peers_that_fit():
    per_process = mp.process_plan(SHAPE, 1, 3, 5, "bfloat16").total
    assert mp.peers_that_fit(SHAPE, 3.5 * per_process, 1, 3, 5, "bfloat16") == 3
    four = mp.process_plan(SHAPE, 4, 3, 5, "bfloat16").total
    # two full processes of 4 and room for a third holding 2 (a process of 2 costs little more than one of 1)
    room = 2 * four + mp.process_plan(SHAPE, 2, 3, 5, "bfloat16").total + 1
    assert mp.peers_that_fit(SHAPE, room, 4, 3, 5, "bfloat16") == 10


def test_shape_of_a_llama_config_counts_what_a_hand_count_gives():
    import transformers as tf

    c = tf.LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=40, num_hidden_layers=3,
                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    shape = mp.shape_of(c, "causal_lm", rank=4, targets=["q_proj", "v_proj"])
    per_layer_linear = 4 * 16 * 16 + 3 * 16 * 40  # q, k, v, o and the gated MLP's three
    assert shape.linear_params == 3 * per_layer_linear
    assert shape.other_params == 2 * 100 * 16 + 3 * 2 * 16 + 16  # embeddings, lm_head, two norms a layer, final norm
    assert shape.trainable_params == 3 * 2 * 4 * (16 + 16)
    assert (shape.hidden, shape.layers, shape.heads, shape.intermediate, shape.vocab) == (16, 3, 2, 40, 100)


def test_shape_for_a_classifier_counts_its_head_as_trainable():
    shape = mp.shape_for_spec(ModelSpec(path="tiny-bert", task="classification", num_labels=2), rank=2)
    lora = 2 * 2 * 2 * (32 + 32)  # 2 layers, query and value, rank 2
    head = 32 * 32 + 32 + 32 * 2 + 2  # BERT's classifier sits on the pooler; peft trains the classifier (32 -> 2)
    assert lora < shape.trainable_params <= lora + head


def cfg(**kw) -> RunConfig:
    return RunConfig(model="tiny-llama", task="causal_lm", **kw)


def test_the_fit_check_passes_when_there_is_room_and_names_the_fixes_when_not():
    shape = mp.shape_for_spec(ModelSpec(path="tiny-llama", task="causal_lm"), 8)
    per_process = mp.process_plan(shape, 1, 32, 64, "bfloat16").total
    groups = [[i] for i in range(4)]
    check_gpu_fit(cfg(peers=4), groups, free=[int(4 * per_process) + 1], cuda=True)
    with pytest.raises(ConfigError) as e:
        check_gpu_fit(cfg(peers=4), groups, free=[int(3.5 * per_process)], cuda=True)
    msg = str(e.value)
    assert "4 peers will not fit on GPU 0" in msg and "3 fit per GPU" in msg and "--peers-per-process 4" in msg
    assert "--base-4bit" in msg and "\n" not in msg
    # two GPUs: two processes on each
    check_gpu_fit(cfg(peers=4, gpus="0,1"), groups, free=[int(2 * per_process) + 1] * 2, cuda=True)


def test_the_fit_check_does_nothing_on_the_cpu():
    check_gpu_fit(cfg(peers=4, cpu=True), [[0], [1]], free=[0], cuda=True)
    check_gpu_fit(cfg(peers=4), [[0], [1]], free=[0], cuda=False)


def test_the_fit_check_refuses_gpus_that_are_not_there():
    with pytest.raises(ConfigError, match="not visible"):
        check_gpu_fit(cfg(peers=2, gpus="0,3"), [[0], [1]], free=[1 << 40], cuda=True)


def test_base_4bit_problems():
    assert "needs a CUDA GPU" in base_4bit_problem(cpu=True, cuda=True) and "--cpu" in base_4bit_problem(True)
    assert "none is visible" in base_4bit_problem(cpu=False, cuda=False)
    assert "save_pretrained" in base_4bit_problem(cpu=False, model="tiny-llama", cuda=True)
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        assert GPU4BIT_HINT in base_4bit_problem(cpu=False, model="/some/folder", cuda=True)


def one_line_error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (rc, err)
    return err


@pytest.mark.parametrize("merging", [["--mode", "stack"], ["--server", "flora"]])
def test_base_4bit_refuses_modes_that_merge_into_the_base(capsys, tmp_path, merging):
    err = one_line_error(capsys, ["simulate", "--model", "tiny-llama", "--base-4bit", *merging, "--out", str(tmp_path)])
    assert "--base-4bit" in err and "merges" in err and "gossip" in err


def test_base_4bit_without_cuda_is_one_line(capsys, tmp_path):
    err = one_line_error(capsys, ["simulate", "--model", "tiny-llama", "--base-4bit", "--cpu", "--out", str(tmp_path)])
    assert "needs a CUDA GPU" in err

"""How much accelerator memory a peer needs, estimated before anything is loaded, so that a run that will not fit
stops at launch with one line instead of running out of memory in round 3.

The arithmetic takes plain numbers (`ModelShape`, batch, sequence length, dtypes) and is unit-tested by hand;
`shape_of` reads those numbers from a model's config.json by building the model on PyTorch's meta device (no
weights are read or allocated). What is counted, per process on a GPU:

- the frozen base: parameters x bytes per parameter (fp32 4, bf16/fp16 2; NF4 packs the linear layers at 4 bits plus
  one fp32 absmax per 64-weight block, bitsandbytes' default, and keeps embeddings, norms and the output head at
  the compute dtype). Held once per process: peers of one process share it (learn.shared_base);
- per peer, its trainable tensors in fp32: the factor, its gradient and AdamW's two moments (16 bytes a parameter);
- activations of one training step, once per process: the peers of a process train one at a time (the
  random-stream lock), and PyTorch's caching allocator hands the freed blocks to the next one;
- a fixed CUDA context (kernels, cuBLAS workspace) per process.

Activations, per token and layer, in words of the compute dtype: `ACT_HIDDEN * hidden + ACT_INTERMEDIATE *
intermediate` (norm inputs and outputs, query/key/value and attention output kept by the fused attention kernel;
the gated MLP's gate, up and activation outputs), plus `ACT_SCORES * heads * seq` when the attention matrix is
materialized (eager attention with dropout, as PyTorch's CPU path for encoders does), plus for a causal LM the
logits (compute dtype) with their fp32 copy for the loss and its fp32 gradient. Frozen linear layers keep no input
for backward (no weight gradient), which is why LoRA's activations are not a full fine-tune's. The constants were
fitted to what autograd saves in a training step of tiny LLaMA and BERT models on the CPU;
tests/unit/test_memory_plan_measured.py checks the estimate against that measurement (within 1.5x, never under).
"""
from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
NF4_BLOCK = 64  # bitsandbytes' default 4-bit block size (transformers' BitsAndBytesConfig, no double quantization)
NF4_BYTES_PER_PARAM = 0.5 + 4.0 / NF4_BLOCK  # two weights a byte, one fp32 absmax per block
TRAINABLE_BYTES_PER_PARAM = 16  # fp32 value, gradient, AdamW exp_avg and exp_avg_sq
CUDA_CONTEXT_BYTES = 600 * (1 << 20)  # per process: CUDA context, kernels and cuBLAS workspace (typical, torch 2.x)
ACT_HIDDEN, ACT_INTERMEDIATE, ACT_SCORES = 8, 3, 3
HEADROOM = 1.10  # allocator rounding and fragmentation on top of the estimate
EVAL_BATCH_MIN = 64  # node.workload evaluates in batches of max(batch_size, 64)


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model that memory depends on. `linear_params`: weights of the linear layers that 4-bit
    quantization packs (every linear layer but the output head); `other_params`: everything else (embeddings,
    norms, biases, output head). `trainable_params`: the LoRA factors at the run's rank plus a trainable head."""

    linear_params: int
    other_params: int
    trainable_params: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    causal_lm: bool

    @property
    def base_params(self) -> int:
        return self.linear_params + self.other_params


def base_bytes(shape: ModelShape, weights: str) -> float:
    """The frozen base: `weights` is float32, bfloat16, float16, or nf4 (with a bf16 remainder)."""
    if weights == "nf4":
        return shape.linear_params * NF4_BYTES_PER_PARAM + shape.other_params * BYTES_PER_PARAM["bfloat16"]
    return shape.base_params * BYTES_PER_PARAM[weights]


def trainable_bytes(shape: ModelShape) -> float:
    return shape.trainable_params * TRAINABLE_BYTES_PER_PARAM


def saved_activation_bytes(shape: ModelShape, batch: int, seq: int, act_bytes: float,
                           attention_matrix: bool = False) -> float:
    """What autograd keeps for backward in one training step (module docstring)."""
    words = ACT_HIDDEN * shape.hidden + ACT_INTERMEDIATE * shape.intermediate
    if attention_matrix:
        words += ACT_SCORES * shape.heads * seq
    total = batch * seq * shape.layers * words * act_bytes
    if shape.causal_lm:  # logits in the compute dtype, and their fp32 copy for the loss unless already fp32
        total += batch * seq * shape.vocab * (act_bytes + (4 if act_bytes < 4 else 0))
    return total


def activation_peak_bytes(shape: ModelShape, batch: int, seq: int, act_bytes: float,
                          attention_matrix: bool = False, eval_batch: int | None = None) -> float:
    """The larger of a training step (saved tensors plus the logits' fp32 gradient in backward) and an evaluation
    batch (no saved tensors: one layer's working set and the logits)."""
    train = saved_activation_bytes(shape, batch, seq, act_bytes, attention_matrix)
    if shape.causal_lm:
        train += batch * seq * shape.vocab * 4
    eb = eval_batch or max(batch, EVAL_BATCH_MIN)
    evaluation = eb * seq * (ACT_HIDDEN * shape.hidden + ACT_INTERMEDIATE * shape.intermediate) * act_bytes
    if attention_matrix:
        evaluation += eb * shape.heads * seq * seq * act_bytes
    if shape.causal_lm:
        evaluation += eb * seq * shape.vocab * (act_bytes + 4)
    return max(train, evaluation)


@dataclass(frozen=True)
class ProcessPlan:
    """Bytes one process needs on its GPU, by part."""

    base: float
    trainable: float  # all the process's peers together
    activations: float
    context: float
    peers: int

    @property
    def total(self) -> float:
        return (self.base + self.trainable + self.activations + self.context) * HEADROOM


def process_plan(shape: ModelShape, peers: int, batch: int, seq: int, weights: str,
                 attention_matrix: bool = False, eval_batch: int | None = None) -> ProcessPlan:
    """A process running `peers` peers that share one frozen base (peers=1: a process per peer)."""
    act_bytes = 2.0 if weights in ("nf4", "bfloat16", "float16") else 4.0  # nf4 computes in bf16
    return ProcessPlan(base=base_bytes(shape, weights), trainable=peers * trainable_bytes(shape),
                       activations=activation_peak_bytes(shape, batch, seq, act_bytes, attention_matrix, eval_batch),
                       context=CUDA_CONTEXT_BYTES, peers=peers)


def gpu_of(peer_id: int, peers_per_process: int, gpus: int) -> int:
    """The slot in the --gpus list of a peer: processes round-robin over the GPUs, and all peers of a process on
    its one GPU (they share one base tensor, which lives on one device)."""
    return (peer_id // max(1, peers_per_process)) % max(1, gpus)


def gpu_bytes(shape: ModelShape, process_sizes: list[int], batch: int, seq: int, weights: str) -> float:
    """Bytes needed on one GPU that runs processes of these peer counts."""
    return sum(process_plan(shape, n, batch, seq, weights).total for n in process_sizes)


def peers_that_fit(shape: ModelShape, free: float, peers_per_process: int, batch: int, seq: int,
                   weights: str) -> int:
    """How many peers fit in `free` bytes with processes of `peers_per_process` peers (the last one may be
    smaller)."""
    full = process_plan(shape, peers_per_process, batch, seq, weights).total
    whole = int(free // full)
    left = free - whole * full
    extra = 0
    while extra < peers_per_process - 1 and process_plan(shape, extra + 1, batch, seq, weights).total <= left:
        extra += 1
    return whole * peers_per_process + extra


def shape_of(config, task: str, rank: int, targets: list[str] | None) -> ModelShape:
    """The ModelShape of a transformers config with a rank-`rank` adapter on `targets` (None: peft's default for the
    architecture), counted on the meta device: nothing is allocated."""
    import torch
    from torch import nn

    from declora.learn.model import _auto_class, default_targets

    with torch.device("meta"):
        model = _auto_class(task).from_config(config)
    head = model.get_output_embeddings() if task == "causal_lm" else None
    heads = {id(m) for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in ("classifier", "score")}
    targets = targets or default_targets(model)
    linear = lora = head_params = 0
    for name, module in model.named_modules():
        if id(module) in heads:
            head_params += sum(p.numel() for p in module.parameters())
        if not isinstance(module, nn.Linear) or module is head or id(module) in heads:
            continue
        linear += module.weight.numel()
        if name.rsplit(".", 1)[-1] in targets:
            lora += rank * (module.in_features + module.out_features)
    total = sum(p.numel() for p in model.parameters())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def get(*names, default=0):
        return next((int(getattr(text, n)) for n in names if getattr(text, n, None)), default)

    hidden = get("hidden_size", "n_embd", "dim", "d_model")
    return ModelShape(linear_params=linear, other_params=total - linear, trainable_params=lora + head_params,
                      hidden=hidden, layers=get("num_hidden_layers", "n_layer", "n_layers"),
                      heads=get("num_attention_heads", "n_head", "n_heads"),
                      intermediate=get("intermediate_size", "n_inner", "hidden_dim", "ffn_dim", default=4 * hidden),
                      vocab=get("vocab_size"), causal_lm=task == "causal_lm")


def shape_for_spec(spec, rank: int) -> ModelShape:
    """The ModelShape of a `model.ModelSpec` (a checkpoint folder's config.json, or a tiny model's config)."""
    from declora.learn.model import _checkpoint_folder
    from declora.learn.tiny_models import TINY_MODELS, tiny_config_and_tokenizer

    if spec.path in TINY_MODELS:
        config, _ = tiny_config_and_tokenizer(spec.path, spec.task, spec.num_labels)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(_checkpoint_folder(spec.path))
    if spec.task != "causal_lm":
        config.num_labels = 1 if spec.task == "regression" else spec.num_labels
    return shape_of(config, spec.task, rank, list(spec.target_modules) if spec.target_modules else None)


def describe(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB"

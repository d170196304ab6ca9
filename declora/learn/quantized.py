"""QLoRA's frozen base (`--base-4bit`): the linear layers packed in NF4 by bitsandbytes as the checkpoint loads,
computing in bf16, as Dec-LoRA trains LLaMA-2. Embeddings, norms and the output head stay bf16 (transformers keeps
the head out of quantization). The LoRA factors stay fp32 and the wire is unchanged: only the frozen base shrinks.

Modes that merge into the base (stack, FLoRA) are refused with a 4-bit base (config.checks): each merge would be
rounded to 4 bits, and the merged weights would have to be re-packed every round.

bitsandbytes is an optional extra (`pip install -e .[gpu4bit]`): it is imported only here, only when asked for.
"""
from __future__ import annotations

import importlib.util

import torch

from declora.learn.tiny_models import TINY_MODELS

GPU4BIT_HINT = "install bitsandbytes with `pip install -e .[gpu4bit]`"


def base_4bit_problem(cpu: bool, model: str = "", cuda: bool | None = None) -> str | None:
    """Why a 4-bit base cannot load here (None: it can). bitsandbytes' NF4 kernels run on CUDA only; `cuda`
    overrides the detection (for tests)."""
    if cpu or not (torch.cuda.is_available() if cuda is None else cuda):
        return ("--base-4bit needs a CUDA GPU (bitsandbytes' NF4 kernels run on CUDA only)" +
                (", but --cpu is set: drop one of them" if cpu else ", and none is visible: drop --base-4bit"))
    if model in TINY_MODELS:
        return (f"--base-4bit quantizes a checkpoint as it loads, but {model} is built from a config: save it with "
                f"save_pretrained and pass that folder as --model")
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"--base-4bit needs the bitsandbytes package: {GPU4BIT_HINT}"
    return None


def load_4bit(auto_class, name: str, path, config, device: torch.device | str):
    """`auto_class.from_pretrained(path)` with the linear layers in NF4 on `device` (a CUDA device)."""
    problem = base_4bit_problem(torch.device(device).type != "cuda", name)
    if problem:
        raise ValueError(problem)
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return auto_class.from_pretrained(path, config=config, dtype=torch.bfloat16, quantization_config=quant,
                                      device_map={"": torch.device(device).index or 0})  # the CUDA index


def is_packed(weight: torch.Tensor) -> bool:
    """A bitsandbytes 4-bit weight (uint8 storage, two weights a byte): nothing can be added to it in place."""
    return not weight.is_floating_point()

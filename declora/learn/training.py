"""Local training: K AdamW steps on a peer's own data.

The trainer keeps its optimizer state across rounds (gossip overwrites the adapter's values in place, which leaves
AdamW's moments attached to the right tensors) and rebuilds the optimizer when the adapter's parameters are new
objects (a rank change, or stack mode's fresh adapter). Everything a resume needs is in `state_dict()`.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from declora.learn.batching import batches
from declora.learn.tokenize import TokenizedDataset

SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainConfig:
    """How a learner trains. A run's values come from its run config (the node layer builds a TrainConfig from
    `RunConfig`); the literal defaults here only spare tests from spelling out every field."""

    lr: float = 2e-3  # AdamW learning rate of the LoRA factors
    head_lr: float | None = 5e-3  # of the other trainable tensors (classifier head); None = lr
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps
    schedule: str = "constant"  # constant | linear | cosine (decay to 0 at total_steps)
    total_steps: int = 0  # horizon of the linear/cosine decay (rounds x local_steps); unused by constant
    max_grad_norm: float = 1.0  # 0 = no clipping
    grad_accum: int = 1  # micro-batches per optimizer step; batch_size is split among them
    batch_size: int = 32  # examples per optimizer step
    local_steps: int = 10  # optimizer steps per round
    max_length: int = 64  # tokens per example
    group_by_length: bool = False  # batches of similar-length examples (less padding; see batching.batches)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.schedule != "constant" and self.total_steps <= 0:
            raise ValueError(f"the {self.schedule} schedule decays over total_steps: set it (rounds x local steps)")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must split evenly into grad_accum {self.grad_accum} "
                             f"micro-batches")
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ValueError(f"learning rates must be > 0, got lr={self.lr} head_lr={self.head_lr}")

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps))
    if config.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def forward_context(model: nn.Module):
    """Autocast when the frozen base is bf16/fp16 while the trainable tensors are fp32 (the CUDA policy): the
    fp32 head then runs on the low-precision activations. A no-op for an fp32 model."""
    frozen = next((p for p in model.parameters() if not p.requires_grad and p.is_floating_point()), None)
    if frozen is None or frozen.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=frozen.device.type, dtype=frozen.dtype)


class LocalTrainer:
    """AdamW on the model's trainable tensors over an endless, seeded, per-epoch reshuffled stream of batches."""

    def __init__(self, model: nn.Module, dataset: TokenizedDataset, config: TrainConfig, seed: int = 0):
        if len(dataset) == 0:
            raise ValueError("a peer needs at least one training example")
        self.model, self.dataset, self.config, self.seed = model, dataset, config, seed
        self.step = 0  # optimizer steps taken, across rounds (drives the schedule)
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches already drawn from this epoch
        self._batches = None
        self.optimizer = self._new_optimizer()

    # ---- optimizer --------------------------------------------------------------------------------------------
    def _groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, base lr) per optimizer group: the LoRA factors at lr, the other trainable tensors (the
        classifier head, which starts from scratch) at head_lr."""
        lora, other = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (lora if ".lora_" in name else other).append(p)
        head_lr = self.config.head_lr or self.config.lr
        return [(params, lr) for params, lr in ((lora, self.config.lr), (other, head_lr)) if params]

    def _new_optimizer(self) -> torch.optim.AdamW:
        groups = [{"params": params, "base_lr": lr, "lr": lr} for params, lr in self._groups()]
        if not groups:
            raise ValueError("the model has no trainable parameters")
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)

    def reset_optimizer(self, carry_moments: bool = False) -> None:
        """Fresh AdamW over the current trainable tensors (after set_rank / merge_delta_and_reset replaced them).
        The schedule continues from the current step. `carry_moments`: each new tensor takes the AdamW state of the
        old tensor in its place when the shapes match (stack/FLoRA's fresh adapter after a merge, issue 15)."""
        old, self.optimizer = self.optimizer, self._new_optimizer()
        if not carry_moments:
            return
        for old_group, new_group in zip(old.param_groups, self.optimizer.param_groups):
            for p_old, p_new in zip(old_group["params"], new_group["params"]):
                state = old.state.get(p_old)
                if state and p_old.shape == p_new.shape:
                    self.optimizer.state[p_new] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}

    def _optimizer_is_stale(self) -> bool:
        held = [id(p) for g in self.optimizer.param_groups for p in g["params"]]
        return held != [id(p) for params, _ in self._groups() for p in params]

    # ---- data -------------------------------------------------------------------------------------------------
    def _next_batch(self) -> dict[str, torch.Tensor]:
        while True:
            if self._batches is None:
                self._batches = batches(self.dataset, self.config.micro_batch_size, self.seed, self.epoch,
                                        start=self.batch_in_epoch, group_by_length=self.config.group_by_length)
            batch = next(self._batches, None)
            if batch is not None:
                self.batch_in_epoch += 1
                return batch
            self.epoch, self.batch_in_epoch, self._batches = self.epoch + 1, 0, None

    # ---- training ---------------------------------------------------------------------------------------------
    def train_steps(self, k: int | None = None, after_step: Callable[[float], None] | None = None,
                    before_step: Callable[[], None] | None = None) -> dict:
        """k optimizer steps (default: config.local_steps). Drift correction's hooks: `before_step()` once the
        gradients are in, before clipping and the step; `after_step(f)` after each step, with its learning-rate factor.
        Returns the mean loss, steps, samples, seconds, lr, and whether the optimizer had to be rebuilt because the
        adapter's tensors were replaced."""
        k = self.config.local_steps if k is None else k
        rebuilt = self._optimizer_is_stale()
        if rebuilt:
            self.reset_optimizer()
        device = model_device(self.model)
        self.model.train()
        start, losses, samples = time.perf_counter(), [], 0
        for _ in range(k):
            factor = lr_factor(self.step, self.config)
            loss, n = self._one_step(device, before_step)
            if after_step is not None:
                after_step(factor)
            losses.append(loss)
            samples += n
        return {"loss": sum(losses) / max(1, len(losses)), "steps": k, "samples": samples,
                "seconds": time.perf_counter() - start, "lr": self.optimizer.param_groups[0]["lr"],
                "optimizer_reset": rebuilt}

    def _one_step(self, device: torch.device, before_step: Callable[[], None] | None = None) -> tuple[float, int]:
        factor = lr_factor(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        self.optimizer.zero_grad(set_to_none=True)
        micro = [self._next_batch() for _ in range(self.config.grad_accum)]
        total = sum(len(b["input_ids"]) for b in micro)
        step_loss = 0.0
        for batch in micro:
            batch = {key: t.to(device) for key, t in batch.items()}
            with forward_context(self.model):
                loss = self.model(**batch).loss
            share = len(batch["input_ids"]) / total  # micro-batches weigh by their examples
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at step {self.step}: lower the learning rate "
                                         f"or check the data and the adapter")
            (loss * share).backward()
            step_loss += loss.item() * share
        if before_step is not None:
            before_step()
        if self.config.max_grad_norm > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.step += 1
        return step_loss, total

    # ---- checkpoint -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Optimizer, schedule position, data position and RNG: with the adapter, all a resume needs. A copy:
        the optimizer's own state_dict aliases tensors that the next step changes."""
        state = {"optimizer": copy.deepcopy(self.optimizer.state_dict()), "step": self.step, "epoch": self.epoch,
                 "batch_in_epoch": self.batch_in_epoch, "seed": self.seed, "config": asdict(self.config),
                 "torch_rng": torch.get_rng_state()}
        device = model_device(self.model)
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was taken; the model must already hold the adapter saved with it."""
        if self._optimizer_is_stale():
            self.reset_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        for group, (_, base_lr) in zip(self.optimizer.param_groups, self._groups()):
            group["base_lr"] = base_lr  # the config in force decides the learning rate, not the checkpoint
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        self.seed = int(state["seed"])
        self._batches = None
        torch.set_rng_state(state["torch_rng"])
        device = model_device(self.model)
        if "cuda_rng" in state and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)

"""One peer's learner: the LoRA model, its trainer and data, its evaluation set, and its own random stream.

The peer loop speaks to this object only; it never touches peft or the model. Every operation that touches the model
runs inside the learner's `RngStream`, so several learners can share a process and each draws exactly the dropout
masks and fresh-adapter inits it would draw in a process of its own.
"""
from __future__ import annotations

from pathlib import Path

import torch

from declora.core import aggregate
from declora.core.drift import Correction
from declora.core.factors import Adapter
from declora.learn.evaluation import evaluate
from declora.learn.live_adapter import GradientCorrector, freeze_lora_A, offset_applier
from declora.learn.multiple_choice_eval import evaluate_multiple_choice
from declora.learn.model import (base_weights, load_base_weights, merge_delta_and_reset, read_adapter, save_adapter,
                                 save_merged_model, write_adapter)
from declora.learn.rng import RngStream
from declora.learn.training import LocalTrainer, lr_factor


class Learner:
    def __init__(self, model, tokenizer, trainer: LocalTrainer, eval_set, task: str, rank: int, seed: int,
                 eval_batch_size: int = 64, mc_set: list | None = None, mc_scoring: str = "letter", dev_set=None):
        self.model, self.tokenizer, self.trainer = model, tokenizer, trainer
        self.eval_set, self.task, self.rank, self.seed = eval_set, task, rank, seed
        self.dev_set = dev_set  # --holdout: eval_set is the validation split, this the final report's set
        self.eval_batch_size = eval_batch_size
        self.mc_set, self.mc_scoring = mc_set or [], mc_scoring  # multiple-choice questions (causal LM)
        self.rng = RngStream(seed, next(model.parameters()).device)

    @property
    def samples(self) -> int:
        """Training examples this learner holds (a server weighs its update by them)."""
        return len(self.trainer.dataset)

    def train(self, steps: int | None = None, correction: Correction | None = None) -> dict:
        """`steps` optimizer steps (default: the trainer's steps per round); the trainer's stats.

        `correction` (drift correction, core.drift): a "gradient" one is added to every step's gradients, and the
        round's mean corrected gradient is written back into it; a "step" one is a displacement subtracted after
        every step. That displacement was measured in the steps of the last round, so it is scaled like a step: by
        this step's learning-rate factor over that round's mean (a correction taken at a high rate must not push a
        model whose own steps have annealed to nothing)."""
        if correction is None:
            with self.rng:
                return self.trainer.train_steps(steps)
        if correction.kind == "gradient":
            corrector = GradientCorrector(self.model, correction.value)
            with self.rng:
                stats = self.trainer.train_steps(steps, before_step=corrector)
            correction.mean_gradient = corrector.mean()
            return stats
        with self.rng:
            return self.trainer.train_steps(steps, after_step=self._step_offset(correction.value))

    def _step_offset(self, offset: Adapter):
        apply, config, step = offset_applier(self.model, offset), self.trainer.config, self.trainer.step
        first = max(0, step - config.local_steps)  # the last round's steps (this round's in the first)
        ref = sum(lr_factor(s, config) for s in range(first, first + config.local_steps)) / config.local_steps
        return lambda factor: apply(factor / ref if ref > 0 else 0.0)

    def freeze_A(self) -> None:
        """FFA-LoRA: only B and the head train; A keeps the run's shared initial value."""
        freeze_lora_A(self.model)
        self.trainer.reset_optimizer()

    def skip_to_round(self, t: int) -> None:
        """A peer that jumped ahead to round t (catch-up, rejoin) takes the learning rate of round t: the schedule
        runs on optimizer steps, and a peer left at the step of its last own round would train at a higher rate than
        its neighbours at the end of a decaying schedule, and drift from them as they anneal."""
        self.trainer.step = max(self.trainer.step, int(t) * self.trainer.config.local_steps)

    def adapter(self) -> Adapter:
        return read_adapter(self.model)

    def load(self, adapter: Adapter) -> None:
        """Put a mixed adapter into the model (a rank change re-creates the adapter: the trainer notices)."""
        with self.rng:
            write_adapter(self.model, adapter)

    def merge_and_restart(self, stacked: Adapter, keep_moments: bool = False) -> dict[str, torch.Tensor]:
        """FLoRA: merge the stack's exact weighted sum of products into the base, start a fresh adapter at our own
        rank, keep the stack's averaged dense tensors (the head), and a fresh optimizer (`keep_moments`: one that
        carries the old AdamW moments over to the fresh tensors). Returns the merged delta."""
        delta = aggregate.merged_delta(stacked)
        with self.rng:
            merge_delta_and_reset(self.model, delta, rank=self.rank, seed=self.seed)
            current = read_adapter(self.model)
            current.dense.update(stacked.dense)
            write_adapter(self.model, current)
            self.trainer.reset_optimizer(carry_moments=keep_moments)
        return delta

    def base_weights(self) -> dict[str, torch.Tensor]:
        """The base weights under the adapter, exactly (stack mode changes them every round)."""
        return base_weights(self.model)

    def restore_base(self, weights: dict[str, torch.Tensor]) -> None:
        """On resume: the base weights exactly as the checkpoint holds them."""
        load_base_weights(self.model, weights)

    def remerge(self, merged: dict[str, torch.Tensor]) -> None:
        """On resume: the base on disk is the pretrained one; re-apply what earlier rounds merged into it."""
        with self.rng:
            merge_delta_and_reset(self.model, merged, rank=self.rank, seed=self.seed)

    def unmerge(self, delta: dict[str, torch.Tensor]) -> None:
        """Take a delta that `merge_and_restart` merged back out of the base (a rollback), with a fresh adapter and
        optimizer; load the adapter to go on with afterwards. Exact up to the base dtype's rounding."""
        with self.rng:
            merge_delta_and_reset(self.model, {k: -d for k, d in delta.items()}, rank=self.rank, seed=self.seed)
            self.trainer.reset_optimizer()

    def evaluate(self, limit: int = 0) -> dict:
        """The eval metrics on the first `limit` examples (0: all), and the multiple-choice accuracy (overall and per
        subject) on the first `limit` questions when there are any."""
        subset = self.eval_set.head(limit) if limit else self.eval_set
        with self.rng:
            result = evaluate(self.model, subset, self.task, batch_size=self.eval_batch_size)
            if self.mc_set:
                questions = self.mc_set[:limit] if limit else self.mc_set
                result.update(evaluate_multiple_choice(self.model, self.tokenizer, questions, self.mc_scoring,
                                                       batch_size=max(1, self.eval_batch_size // 4)))
            return result

    def evaluate_dev(self) -> dict:
        """The eval metrics on the whole dev set, when eval_set is a held-out validation split ({} otherwise)."""
        if self.dev_set is None:
            return {}
        with self.rng:
            return evaluate(self.model, self.dev_set, self.task, batch_size=self.eval_batch_size)

    def state_dict(self) -> dict:
        """The trainer's state, with this learner's random stream as the generator state a resume restores."""
        with self.rng:
            return self.trainer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        with self.rng:
            self.trainer.load_state_dict(state)

    def save(self, out_dir: Path, base_changed: bool) -> None:
        """The adapter (loadable with PeftModel.from_pretrained on the original base) or, once rounds have merged
        deltas into the base (stack, flora), the whole merged model: the adapter alone would match no base on disk."""
        if base_changed:
            save_merged_model(self.model, self.tokenizer, out_dir)
        else:
            save_adapter(self.model, out_dir)

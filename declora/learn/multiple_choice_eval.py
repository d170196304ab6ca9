"""Score multiple-choice questions with a causal LM: per question, the option the model finds most likely wins.

The prompt is the instruction and the lettered options, rendered as training renders instruction data (the
tokenizer's chat template when it has one, else the Alpaca template), followed by FLoRA's "The answer is:". Then:
- `letter` (default, as MMLU is usually scored): the log-likelihood of each option's letter (" A", " B", ...).
  Letters are single tokens for common tokenizers, so one forward pass per question scores every option.
- `text`: the mean log-likelihood per token of each option's text; fairer to a model that never saw the letters,
  slower (one sequence per option).

Accuracy claims need a real pretrained model: a tiny test model scores at chance level, and these numbers only
prove that the scoring runs end to end.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from declora.learn.multiple_choice import ANSWER_PREFIX, LETTERS, MultipleChoiceExample
from declora.learn.tokenize import encode_prompt, render_prompt
from declora.learn.training import forward_context, model_device

SCORINGS = ("letter", "text")


def evaluate_multiple_choice(model: nn.Module, tokenizer, examples: Sequence[MultipleChoiceExample],
                             scoring: str = "letter", batch_size: int = 16, max_length: int = 512) -> dict:
    """{"mc_accuracy": over all questions, "mc_accuracy_macro": the mean over subjects (FLoRA's figure),
    "mc_questions": n, "mc_subjects": {subject: accuracy}}. Runs in eval mode and restores the model's mode."""
    if scoring not in SCORINGS:
        raise ValueError(f"multiple-choice scoring must be {' or '.join(SCORINGS)}, got {scoring!r}")
    if not examples:
        raise ValueError("no multiple-choice questions to evaluate")
    requests = [_request(tokenizer, e, scoring, max_length) for e in examples]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if all(len(cont) == 1 for _, conts in requests for cont in conts):
                scores = _next_token_scores(model, requests, batch_size, int(tokenizer.pad_token_id))
            else:
                scores = _continuation_scores(model, requests, batch_size, int(tokenizer.pad_token_id),
                                              per_token=scoring == "text")
    finally:
        model.train(was_training)
    right: dict[str, list[bool]] = defaultdict(list)
    for example, option_scores in zip(examples, scores):
        right[example.subject].append(max(range(len(option_scores)), key=option_scores.__getitem__) == example.answer)
    subjects = {s: sum(v) / len(v) for s, v in sorted(right.items())}
    return {"mc_accuracy": sum(sum(v) for v in right.values()) / len(examples),
            "mc_accuracy_macro": sum(subjects.values()) / len(subjects),
            "mc_questions": len(examples), "mc_subjects": subjects}


def _request(tokenizer, example: MultipleChoiceExample, scoring: str, max_length: int):
    """(context ids, one continuation's ids per option). The space before an option belongs to the option, as the
    tokenizer would see it in running text (" A" is one token in GPT-2's and LLaMA's vocabularies, "A" after a
    space is not the same token)."""
    context = render_prompt(tokenizer, example.instruction, example.context()) + ANSWER_PREFIX.rstrip()
    options = [LETTERS[i] for i in range(len(example.choices))] if scoring == "letter" else list(example.choices)
    context_ids = encode_prompt(tokenizer, context)
    continuations = []
    for option in options:
        whole = encode_prompt(tokenizer, f"{context} {option}")
        if whole[:len(context_ids)] == context_ids and len(whole) > len(context_ids):
            continuations.append(whole[len(context_ids):])
        else:  # the tokenizer merged across the boundary: encode the option on its own
            continuations.append(tokenizer(f" {option}", add_special_tokens=False)["input_ids"])
    longest = max(len(c) for c in continuations)
    return context_ids[-max(1, max_length - longest):], continuations  # keep the end: the options and "answer is"


def _next_token_scores(model, requests, batch_size: int, pad_id: int) -> list[list[float]]:
    """Every option is one token: the log-probability of each at the position after the context."""
    scores = []
    for begin in range(0, len(requests), batch_size):
        chunk = requests[begin: begin + batch_size]
        logits = _forward(model, [ctx for ctx, _ in chunk], pad_id)
        for row, (ctx, conts) in enumerate(chunk):
            logprobs = F.log_softmax(logits[row, len(ctx) - 1], dim=-1)
            scores.append([logprobs[cont[0]].item() for cont in conts])
    return scores


def _continuation_scores(model, requests, batch_size: int, pad_id: int, per_token: bool) -> list[list[float]]:
    """Sum (or mean per token) of the log-probabilities of each option's tokens after the context."""
    flat = [(q, ctx, cont) for q, (ctx, conts) in enumerate(requests) for cont in conts]
    scores: list[list[float]] = [[] for _ in requests]
    for begin in range(0, len(flat), batch_size):
        chunk = flat[begin: begin + batch_size]
        logits = _forward(model, [ctx + cont for _, ctx, cont in chunk], pad_id)
        for row, (q, ctx, cont) in enumerate(chunk):
            positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
            logprobs = F.log_softmax(logits[row, positions], dim=-1)
            total = logprobs[torch.arange(len(cont)), torch.tensor(cont)].sum().item()
            scores[q].append(total / len(cont) if per_token else total)
    return scores


def _forward(model, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Logits (float32) of right-padded sequences; padding is masked and never read."""
    longest = max(len(s) for s in sequences)
    device = model_device(model)
    ids = torch.tensor([s + [pad_id] * (longest - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in sequences], device=device)
    with forward_context(model):
        return model(input_ids=ids, attention_mask=mask).logits.float()

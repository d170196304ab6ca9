"""Tokenization: the instruction prompt template, and every example tokenized once into a `TokenizedDataset`.

No peft here; transformers only through the tokenizer object the caller passes in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from declora.learn.examples import Example, InstructionExample, TextExample, task_of

IGNORE_INDEX = -100  # label value the cross-entropy loss skips (prompt and padding tokens)


# The Alpaca template, as FedIT / FLoRA use for Dolly; the loss covers only what follows "### Response:".
PROMPT_WITH_CONTEXT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)
PROMPT_NO_CONTEXT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_prompt(example: InstructionExample) -> str:
    """The Alpaca prompt of an instruction record (the template for tokenizers without a chat template)."""
    if example.context.strip():
        return PROMPT_WITH_CONTEXT.format(instruction=example.instruction, context=example.context)
    return PROMPT_NO_CONTEXT.format(instruction=example.instruction)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, instruction: str, context: str = "") -> str:
    """The text before the response: the tokenizer's chat template (one user turn, then the assistant's turn opened)
    when it has one, since a chat model was tuned on that format; the Alpaca template otherwise."""
    if not has_chat_template(tokenizer):
        return format_prompt(InstructionExample(instruction, "", context))
    content = f"{instruction}\n\n{context}" if context.strip() else instruction
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt. A chat template writes its own special tokens (BOS included), so the
    tokenizer must not add them a second time."""
    return tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


@dataclass
class TokenizedDataset:
    """Token ids per example, tokenized once; `batches` pads them per batch.

    Each feature has input_ids and attention_mask (and token_type_ids for BERT-style tokenizers) and `labels`:
    an int for classification, a float for regression, a list aligned with input_ids (IGNORE_INDEX on prompt
    tokens) for causal LM.
    """

    task: str
    features: list[dict] = field(default_factory=list)
    pad_token_id: int = 0

    def __len__(self) -> int:
        return len(self.features)

    def head(self, n: int) -> "TokenizedDataset":
        """The first n examples (e.g. a quicker evaluation during a run)."""
        return TokenizedDataset(self.task, self.features[:n] if n > 0 else self.features, self.pad_token_id)


def tokenize(examples: Sequence[Example], tokenizer, task: str | None = None, max_length: int = 64) -> TokenizedDataset:
    """Tokenize every example once, truncated to max_length tokens."""
    task = task or task_of(examples)
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token (adapter.build_model sets one)")
    if task in ("classification", "regression"):
        features = _tokenize_classification(examples, tokenizer, max_length, float if task == "regression" else int)
    elif task == "causal_lm":
        features = [_tokenize_instruction(e, tokenizer, max_length) for e in examples]
    else:
        raise ValueError(f"task must be classification, regression or causal_lm, got {task!r}")
    return TokenizedDataset(task, features, int(tokenizer.pad_token_id))


def _tokenize_classification(examples, tokenizer, max_length: int, label_type=int) -> list[dict]:
    if examples and not isinstance(examples[0], TextExample):
        raise ValueError("classification needs labeled text examples (TSV/CSV), got instruction records")
    pairs = [e.text_pair for e in examples]
    has_pairs = any(p is not None for p in pairs)
    if has_pairs and not all(p is not None for p in pairs):
        raise ValueError("some examples are sentence pairs and some are not")
    encoded = tokenizer([e.text for e in examples], pairs if has_pairs else None, truncation=True,
                        max_length=max_length)
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [{**{k: encoded[k][i] for k in names}, "labels": label_type(e.label)} for i, e in enumerate(examples)]


def _tokenize_instruction(example, tokenizer, max_length: int) -> dict:
    if not isinstance(example, InstructionExample):
        raise ValueError("causal LM needs instruction records (JSON/JSONL), got labeled text")
    prompt = encode_prompt(tokenizer, render_prompt(tokenizer, example.instruction, example.context))
    response = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response = response + [tokenizer.eos_token_id]  # so the model learns where an answer ends
    if len(prompt) + len(response) > max_length:
        # Long contexts would otherwise push the whole response out and leave nothing to learn from:
        # keep at least a quarter of the budget for the response.
        keep_response = min(len(response), max(max_length - len(prompt), max_length // 4))
        prompt, response = prompt[: max_length - keep_response], response[:keep_response]
    input_ids = prompt + response
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids),
            "labels": [IGNORE_INDEX] * len(prompt) + response}


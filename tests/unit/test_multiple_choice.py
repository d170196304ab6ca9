"""Multiple-choice evaluation of causal LMs: the MMLU CSV and FLoRA JSON layouts, and likelihood scoring checked
against a one-sequence-at-a-time oracle on real (tiny) models."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from declora.learn.model import ModelSpec, build_base
from declora.learn.multiple_choice import (LETTERS, MultipleChoiceExample, is_multiple_choice_file,
                                           load_multiple_choice)
from declora.learn.multiple_choice_eval import _request, evaluate_multiple_choice
from declora.learn.tiny_models import byte_tokenizer
from declora.learn.tokenize import encode_prompt, render_prompt
from tests.tiny_models import need_tiny_gpt2

FLORA_RECORDS = [
    {"instruction": "Please answer the following multiple-choice question honestly.",
     "input": "Qusetion: Which is a prime? Options: A. 4, B. 6, C. 7, D. 8", "output": "The answer is: C. 7",
     "class": "math"},
    {"instruction": "Please answer the following multiple-choice question honestly.",
     "input": "Qusetion: Statement 1| x. Statement 2| y. Options: A. True, True, B. False, False, C. True, False, "
              "D. False, True", "output": "The answer is: D. False, True", "class": "logic"},
]


def test_mmlu_csv_layouts_and_folder(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    (folder / "anatomy_test.csv").write_text('"What is, in short, the heart?",organ,bone,"a ""muscle""",cell,A\n'
                                             "Second?,w,x,y,z,D\n")
    (folder / "virology_test.csv").write_text("question,A,B,C,D,answer\nQ?,a,b,c,d,2\n")
    anatomy = load_multiple_choice(folder / "anatomy_test.csv")
    assert anatomy[0] == MultipleChoiceExample("What is, in short, the heart?", ("organ", "bone", 'a "muscle"', "cell"),
                                               0, "anatomy")
    assert anatomy[1].answer == 3
    everything = load_multiple_choice(folder)
    assert [(e.subject, e.answer) for e in everything] == [("anatomy", 0), ("anatomy", 3), ("virology", 2)]
    assert is_multiple_choice_file(folder / "anatomy_test.csv")


def test_flora_json_keeps_commas_inside_options(tmp_path):
    path = tmp_path / "mmlu_test_1444.jsonl"
    path.write_text(json.dumps(FLORA_RECORDS, indent=1))  # FLoRA's ".jsonl" is one JSON array
    first, second = load_multiple_choice(path)
    assert first == MultipleChoiceExample("Which is a prime?", ("4", "6", "7", "8"), 2, "math",
                                          FLORA_RECORDS[0]["instruction"])
    assert second.choices == ("True, True", "False, False", "True, False", "False, True")
    assert second.answer == 3 and second.subject == "logic"
    lines = tmp_path / "lines.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in FLORA_RECORDS))
    assert load_multiple_choice(lines) == [first, second]
    assert first.context() == "Question: Which is a prime? Options: A. 4, B. 6, C. 7, D. 8"


@pytest.mark.parametrize("content, message", [
    ("Q?,a,b,c,d,E\n", r"bad.csv:1: answer 'E' is not a letter A-D"),
    ("Q?,a,b,B\nQ2?,x\n", r"bad.csv:2: 2 fields"),
    ("", "no questions"),
])
def test_bad_mmlu_rows_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_multiple_choice(path)
    assert "\n" not in str(info.value)
    assert not is_multiple_choice_file(path)


def test_bad_flora_records_name_the_record(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps([FLORA_RECORDS[0], {"instruction": "x", "input": "no options", "output": "A"}]))
    with pytest.raises(ValueError, match=r"eval.json: record 1: the input has no 'Options:"):
        load_multiple_choice(path)
    path.write_text(json.dumps([{"instruction": "Dolly", "response": "not multiple choice"}]))
    with pytest.raises(ValueError, match=r"record 0: expected FLoRA's fields"):
        load_multiple_choice(path)


def _oracle_scores(model, tokenizer, example, scoring):
    """One sequence per option, no batching, no padding: the log-likelihood the fast paths must reproduce."""
    context, continuations = _request(tokenizer, example, scoring, max_length=512)
    scores = []
    for cont in continuations:
        ids = torch.tensor([context + cont])
        with torch.inference_mode():
            logprobs = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        total = sum(logprobs[len(context) - 1 + k, tok].item() for k, tok in enumerate(cont))
        scores.append(total / len(cont) if scoring == "text" else total)
    return scores


def _questions(n: int) -> list[MultipleChoiceExample]:
    words = ["red", "green blue", "a much longer option text", "x"]
    return [MultipleChoiceExample(f"Question {i}: which colour is {'dark ' * (i % 3)}right?",
                                  tuple(words[(i + k) % 4] for k in range(4)), 0, f"subject{i % 2}")
            for i in range(n)]


def _check_against_oracle(model, tokenizer, scoring):
    model.eval()
    questions = _questions(7)
    best = [max(range(4), key=_oracle_scores(model, tokenizer, q, scoring).__getitem__) for q in questions]
    # Answers set to the oracle's choice score 1.0, set to any other option 0.0: the batched, padded scoring
    # picks exactly the option the plain one-sequence computation prefers.
    right = [MultipleChoiceExample(q.question, q.choices, b, q.subject) for q, b in zip(questions, best)]
    wrong = [MultipleChoiceExample(q.question, q.choices, (b + 1) % 4, q.subject) for q, b in zip(questions, best)]
    result = evaluate_multiple_choice(model, tokenizer, right, scoring=scoring, batch_size=3)
    assert result["mc_accuracy"] == 1.0 and result["mc_questions"] == 7
    assert result["mc_subjects"] == {"subject0": 1.0, "subject1": 1.0}
    assert evaluate_multiple_choice(model, tokenizer, wrong, scoring=scoring, batch_size=4)["mc_accuracy"] == 0.0


@pytest.mark.parametrize("scoring", ["letter", "text"])
def test_scoring_matches_the_oracle_on_a_tiny_llama(scoring):
    torch.manual_seed(0)
    model, tokenizer = build_base(ModelSpec(path="tiny-llama", task="causal_lm"))
    _check_against_oracle(model, tokenizer, scoring)


@pytest.mark.parametrize("scoring", ["letter", "text"])
def test_scoring_matches_the_oracle_on_the_tiny_gpt2_checkpoint(scoring):
    model, tokenizer = build_base(ModelSpec(path=str(need_tiny_gpt2()), task="causal_lm"))
    _, continuations = _request(tokenizer, _questions(1)[0], "letter", 512)
    assert all(len(c) == 1 for c in continuations)  # GPT-2's " A" is one token: the one-pass path runs
    _check_against_oracle(model, tokenizer, scoring)


def test_macro_accuracy_is_the_mean_over_subjects():
    model, tokenizer = build_base(ModelSpec(path="tiny-llama", task="causal_lm"))
    questions = _questions(3)
    result = evaluate_multiple_choice(model, tokenizer, questions)
    per_subject = result["mc_subjects"]
    assert result["mc_accuracy_macro"] == pytest.approx(sum(per_subject.values()) / len(per_subject))
    with pytest.raises(ValueError, match="scoring must be letter or text"):
        evaluate_multiple_choice(model, tokenizer, questions, scoring="logits")


def test_chat_template_is_used_when_the_tokenizer_has_one():
    tokenizer = byte_tokenizer("llama")
    plain = render_prompt(tokenizer, "Say hi", "to Bob")
    assert plain.startswith("Below is an instruction") and "### Input:\nto Bob" in plain
    assert encode_prompt(tokenizer, "x")[0] == tokenizer.bos_token_id
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    chat = render_prompt(tokenizer, "Say hi", "to Bob")
    assert chat == "<s><|user|>Say hi\n\nto Bob<|assistant|>"
    ids = encode_prompt(tokenizer, chat)
    assert ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, not a second one from the tokenizer
    assert LETTERS[:4] == "ABCD"


def test_training_prompts_use_the_chat_template_too():
    from declora.learn.examples import InstructionExample
    from declora.learn.tokenize import IGNORE_INDEX, tokenize

    tokenizer = byte_tokenizer("llama")
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    feature = tokenize([InstructionExample("Say hi", "hi", "to Bob")], tokenizer, "causal_lm", max_length=128).features[0]
    prompt = encode_prompt(tokenizer, "<s><|user|>Say hi\n\nto Bob<|assistant|>")
    assert feature["input_ids"][:len(prompt)] == prompt
    assert feature["labels"][:len(prompt)] == [IGNORE_INDEX] * len(prompt)  # the loss is on the response only
    assert feature["input_ids"][len(prompt):] == feature["labels"][len(prompt):]

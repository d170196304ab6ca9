"""Tiny models for tests: `tiny-bert` and `tiny-llama` (hidden 32, 2 layers), built from configs with a byte-level
tokenizer made in code, so that a test needs no checkpoint files and no hub. `model.build_base` builds them by name.
"""
from __future__ import annotations

TINY_MODELS = ("tiny-bert", "tiny-llama")
# Tiny models stand in for a checkpoint, so every peer must build the same one whatever its own seed.
TINY_BASE_SEED = 1234


def tiny_config_and_tokenizer(name: str, task: str, num_labels: int):
    """The transformers config (untrained weights come from it) and the byte tokenizer of tiny model `name`."""
    from transformers import BertConfig, LlamaConfig

    if name not in TINY_MODELS:
        raise ValueError(f"tiny model must be one of {', '.join(TINY_MODELS)}, got {name!r}")
    if name == "tiny-bert":
        tokenizer = byte_tokenizer(style="bert")
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    else:
        tokenizer = byte_tokenizer(style="llama")
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    if task == "classification":
        config.num_labels = num_labels
    return config, tokenizer


def byte_tokenizer(style: str = "bert"):
    """A byte-level tokenizer built in code (no files, no hub): one token per UTF-8 byte plus special tokens.

    `bert` wraps text as [CLS] a [SEP] (b [SEP]); `llama` prepends <s>. Any text tokenizes, which is all a
    tiny test model needs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style == "bert":
        specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                    "mask_token": "[MASK]"}
    elif style == "llama":
        specials = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    else:
        raise ValueError(f"byte_tokenizer style must be bert or llama, got {style!r}")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(list(specials.values()) + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    if style == "bert":
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    else:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=512, **specials)
    if style == "bert":
        tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return tokenizer


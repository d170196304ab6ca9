"""Tiny models for tests, one per supported architecture (hidden 32, 2 layers, 2 heads), built from configs with a
byte-level tokenizer made in code, so that a test needs no checkpoint files and no hub. `model.build_base` builds
them by name. Encoders (`tiny-bert`, `tiny-roberta`, `tiny-distilbert`, `tiny-deberta-v2`) are for classification;
decoders (`tiny-gpt2`, `tiny-llama`, `tiny-mistral`, `tiny-qwen2`, `tiny-gpt-neox`, `tiny-opt`) for causal_lm and
classification (a score head on the last non-pad token). `tiny-bert` and `tiny-llama` are what the golden hashes
were recorded with: do not change them.
"""
from __future__ import annotations

ENCODERS = ("tiny-bert", "tiny-roberta", "tiny-distilbert", "tiny-deberta-v2")
DECODERS = ("tiny-gpt2", "tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-gpt-neox", "tiny-opt")
TINY_MODELS = ENCODERS + DECODERS
# Tiny models stand in for a checkpoint, so every peer must build the same one whatever its own seed.
TINY_BASE_SEED = 1234
# The tokenizer style of each tiny model: `bert` ([CLS] a [SEP], token types), `encoder` (the same without token
# types), `llama` (<s> a, with a pad token), `gpt2` (no specials added, no pad token: build_base sets pad = eos).
TOKENIZER_STYLE = {"tiny-bert": "bert", "tiny-roberta": "encoder", "tiny-distilbert": "encoder",
                   "tiny-deberta-v2": "encoder", "tiny-gpt2": "gpt2", "tiny-llama": "llama", "tiny-mistral": "llama",
                   "tiny-qwen2": "llama", "tiny-gpt-neox": "gpt2", "tiny-opt": "llama"}
MAX_LENGTH = 512


def tiny_config_and_tokenizer(name: str, task: str, num_labels: int):
    """The transformers config (untrained weights come from it) and the byte tokenizer of tiny model `name`."""
    if name not in TINY_MODELS:
        raise ValueError(f"tiny model must be one of {', '.join(TINY_MODELS)}, got {name!r}")
    tokenizer = byte_tokenizer(style=TOKENIZER_STYLE[name])
    config = _config(name, tokenizer)
    if task in ("classification", "regression"):
        config.num_labels = num_labels
    return config, tokenizer


def _config(name: str, tok):
    import transformers as tf

    small = dict(vocab_size=len(tok), num_hidden_layers=2, num_attention_heads=2)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if name == "tiny-bert":
        return tf.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=MAX_LENGTH, pad_token_id=tok.pad_token_id)
    if name == "tiny-llama":
        return tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=MAX_LENGTH,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    if name == "tiny-roberta":  # positions start after padding_idx (= pad id), so the table needs pad + 1 more rows
        return tf.RobertaConfig(**small, hidden_size=32, intermediate_size=64, type_vocab_size=1,
                                max_position_embeddings=MAX_LENGTH + tok.pad_token_id + 2, **ids)
    if name == "tiny-distilbert":
        return tf.DistilBertConfig(vocab_size=len(tok), dim=32, hidden_dim=64, n_layers=2, n_heads=2,
                                   max_position_embeddings=MAX_LENGTH, pad_token_id=tok.pad_token_id)
    if name == "tiny-deberta-v2":  # relative attention (content-to-position both ways), no absolute positions
        return tf.DebertaV2Config(**small, hidden_size=32, intermediate_size=64, max_position_embeddings=MAX_LENGTH,
                                  type_vocab_size=0, relative_attention=True, position_buckets=32,
                                  max_relative_positions=-1, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                  pad_token_id=tok.pad_token_id)
    if name == "tiny-gpt2":  # Conv1D layers; no pad token in the vocabulary, as in the real GPT-2
        return tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=MAX_LENGTH,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if name in ("tiny-mistral", "tiny-qwen2"):  # grouped-query attention: one key/value head for two query heads
        cls = tf.MistralConfig if name == "tiny-mistral" else tf.Qwen2Config
        return cls(**small, hidden_size=32, intermediate_size=64, num_key_value_heads=1,
                   max_position_embeddings=MAX_LENGTH, tie_word_embeddings=False, **ids)
    if name == "tiny-gpt-neox":  # fused query_key_value; partial rotary
        return tf.GPTNeoXConfig(**small, hidden_size=32, intermediate_size=64, max_position_embeddings=MAX_LENGTH,
                                rotary_pct=0.5, tie_word_embeddings=False, **ids)
    # tiny-opt: learned positions offset by 2 (OPT's own), embeddings projected at the model's width
    return tf.OPTConfig(**small, hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=MAX_LENGTH,
                        **ids)


_SPECIALS = {
    "bert": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
             "mask_token": "[MASK]"},
    "llama": {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
    "gpt2": {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
}
_SPECIALS["encoder"] = _SPECIALS["bert"]


def byte_tokenizer(style: str = "bert"):
    """A byte-level tokenizer built in code (no files, no hub): one token per UTF-8 byte plus special tokens.

    `bert` wraps text as [CLS] a [SEP] (b [SEP]) with token type ids; `encoder` the same without them (RoBERTa,
    DistilBERT, DeBERTa-v2 take none here); `llama` prepends <s>; `gpt2` adds nothing and has no pad token. Any
    text tokenizes, which is all a tiny test model needs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style not in _SPECIALS:
        raise ValueError(f"byte_tokenizer style must be one of {', '.join(_SPECIALS)}, got {style!r}")
    specials = _SPECIALS[style]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(list(dict.fromkeys(specials.values())) + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    if style in ("bert", "encoder"):
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    elif style == "llama":
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=MAX_LENGTH, **specials)
    if style == "bert":
        tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    elif style != "llama":  # (llama keeps the default, as when the golden hashes were recorded)
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer

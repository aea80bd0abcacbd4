"""Small stand-ins for the real inputs: a tiny BERT written to a local folder.

Used by the demo and by the tests, which must never touch the network.
"""
import json
import os

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_bert(folder, words, hidden_size=32, num_layers=2, num_heads=2,
                    intermediate_size=64, max_position_embeddings=64,
                    with_weights=True, seed=0):
    """Write a BERT folder (config.json, vocab.txt and, optionally, random weights).

    The vocabulary is BERT's special tokens followed by `words` (deduplicated,
    in order), so `[PAD]` has id 0 as in bert-base-uncased.
    Returns the folder path.
    """
    os.makedirs(folder, exist_ok=True)
    vocab = list(dict.fromkeys(SPECIAL_TOKENS + list(words)))
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"do_lower_case": True, "model_max_length": max_position_embeddings}, f)
    if with_weights:
        import torch
        from transformers import BertConfig, BertModel
        torch.manual_seed(seed)
        BertModel(BertConfig(**config)).save_pretrained(folder)
    return folder

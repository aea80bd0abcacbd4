"""Build a checkpoint in the official release's format (docs/checkpoints.md, "The official release"), for tests.

Every key name and shape below is written out from the release's layout, independently of
the mapping table in lib/formats/checkpoint.py, so a mistake in that table shows up as a
failing load.
"""
import argparse

import torch
from transformers import BertModel


def official_parts(bert_dir, d=1024, img_dim=2048, seed=0):
    """The three official state dicts (without the `module.` prefix) with random values."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen) * 0.05
    image = {
        "fc.weight": rand(d, img_dim), "fc.bias": rand(d),
        "mlp.layers.0.weight": rand(d // 2, img_dim), "mlp.layers.0.bias": rand(d // 2),
        "mlp.layers.1.weight": rand(d, d // 2), "mlp.layers.1.bias": rand(d),
    }
    for index, size in (("0", d // 2), ("1", d)):  # bns.1 is the unused BatchNorm
        image.update({
            f"mlp.bns.{index}.weight": 1 + rand(size), f"mlp.bns.{index}.bias": rand(size),
            f"mlp.bns.{index}.running_mean": rand(size), f"mlp.bns.{index}.running_var": 1 + rand(size).abs(),
            f"mlp.bns.{index}.num_batches_tracked": torch.tensor(1000),
        })
    bert = BertModel.from_pretrained(bert_dir)
    text = {f"bert.{k}": v.clone() for k, v in bert.state_dict().items()}
    # transformers 4.x saved this buffer in 2023; current versions leave it out.
    text["bert.embeddings.position_ids"] = torch.arange(bert.config.max_position_embeddings).unsqueeze(0)
    text["linear.weight"] = rand(d, bert.config.hidden_size)
    text["linear.bias"] = rand(d)
    similarity = {
        "weights.weight": torch.randn(d, d, generator=gen),
        "sim_map.weight": 2.5 + 0.1 * torch.randn(1, d, generator=gen),
        "temp_learnable.weight": torch.full((1, 1), 4.0),
        "temp_scale.weight": torch.full((1, 1), 2.6593),
        "sim_eval.weight": rand(1, d),
    }
    return [image, text, similarity]


def official_opt(d=1024, img_dim=2048):
    """An argparse.Namespace like the official parser's (a subset of its fields)."""
    return argparse.Namespace(
        data_path="../Flickr30K/", data_name="f30k_precomp", vocab_path="./vocab/", margin=0.2,
        num_epochs=25, batch_size=128, word_dim=300, embed_size=d, grad_clip=2.0, learning_rate=0.0005,
        lr_update=15, optim="adam", workers=10, log_step=200, val_step=500, logger_name="../log",
        model_name="../checkpoint", resume="", max_violation=False, img_dim=img_dim, no_imgnorm=False,
        no_txtnorm=False, precomp_enc_type="basic", backbone_path="", backbone_source="detector",
        vse_mean_warmup_epochs=1, reset_start_epoch=False, backbone_warmup_epochs=5,
        embedding_warmup_epochs=2, backbone_lr_factor=0.01, input_scale_factor=1)


def write_official_checkpoint(path, parts, opt):
    """torch.save the parts as the release does: `module.` prefixes, pickled Namespace."""
    model = [{f"module.{k}": v for k, v in part.items()} for part in parts]
    torch.save({"model": model, "opt": opt, "epoch": 24, "best_rsum": 528.2, "Eiters": 12345}, path)
    return path

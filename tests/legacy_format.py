"""Our checkpoint format version 1 (written until December 2026), rebuilt from its description.

A version-1 file is a dict: `format` "xdim", no `version` key, `model` (the flat state
dict, as today), `optimizer`, `epoch`, `best_rsum`, `Eiters`, `opt` (every command-line
option of train.py as a plain dict, official names plus bert_path, device, amp,
threads, seed, mask_padded_regions and sim), `bert_config` (BERT's config.json as a
dict) and `vocab`. The code that wrote it is gone; this writer keeps the format covered.
"""
import torch


def v1_checkpoint(model, opt, **options):
    """A version-1 checkpoint dict of `model`'s weights trained with options `opt` (a namespace);
    `options` change some (sim=None leaves `sim` out, as files from before --sim did)."""
    opt = dict(vars(opt))
    opt.update(options)
    opt = {key: value for key, value in opt.items() if not (key == "sim" and value is None)}
    return {"format": "xdim", "model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
            "epoch": 3, "best_rsum": 123.5, "Eiters": 42, "opt": opt,
            "bert_config": model.bert_config, "vocab": model.vocab()}


def save_v1_checkpoint(model, opt, path, **options):
    torch.save(v1_checkpoint(model, opt, **options), path)
    return path

"""Peak memory and speed of the raw-image mode: a backbone training step, and evaluation of a
5000-image split's shape (COCO 5K).

The model is the recipe's full size: the BUTD ResNet-101 (random weights: memory and time do
not depend on the values), BERT-base's architecture (random weights), d = 1024, T = 512 pixels
(a 16 x 16 grid), every backbone block training (fixed_blocks 0, the most memory). It prints,
all measured in this run:

1. training: ms per step and peak memory for each `--train_batches` per-process batch size,
   and the consume rate (images per second a step takes in), which says how many data loader
   workers keep it fed (divide by bench_image_pipeline.py's images/s per worker);
2. evaluation: the peak of encoding one `--eval_batch` of images (no gradients) and what the
   stored embeddings of a 5000-image split take (5000 x 256 cells x d per image, 25000
   captions of `--mean_tokens` tokens, the 5000 x 25000 score matrix), computed from the shapes.

On CUDA the peaks are torch's allocator peaks. On CPU they are the increase of the process's
peak resident memory (`ru_maxrss`) over a baseline taken after the model and inputs exist;
each batch size runs in a fresh process so the high-water marks do not mask one another.
Memory grows linearly in the batch (activations), so two batch sizes give the slope and the
intercept of the process total (weights, gradients, AdamW's state and the activations);
`--extrapolate B` prints the line's value at B (say so when quoting it).

    python tests/benchmarks/bench_backbone.py --device cuda --train_batches 8 16 --eval_batch 128
    python tests/benchmarks/bench_backbone.py --device cpu --train_batches 1 2 --eval_batch 2 --extrapolate 16
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lib.model.bert import BUNDLED_BERT_BASE, bert_config_dict  # noqa: E402
from lib.model.config import ModelConfig  # noqa: E402
from lib.model.xdim_model import XDimModel  # noqa: E402
from lib.runtime.device import resolve_device  # noqa: E402
from lib.training.config import TrainConfig  # noqa: E402
from lib.training.trainer import Trainer  # noqa: E402

GIB = 2 ** 30


def full_model(device, amp, scale):
    config = ModelConfig(precomp_enc_type="backbone", backbone_path="none", input_scale_factor=scale,
                         bert=BUNDLED_BERT_BASE, bert_config=bert_config_dict(BUNDLED_BERT_BASE))
    torch.manual_seed(0)
    return XDimModel(config, amp=amp).to(device)


def random_captions(batch_size, vocab_size, gen):
    lengths = torch.randint(8, 31, (batch_size,), generator=gen)
    captions = torch.zeros(batch_size, int(lengths.max()), dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        captions[i, :n] = torch.randint(1000, vocab_size, (n,), generator=gen)
    return captions, lengths


class Peak:
    """Peak memory over a block, in GiB above the block's start (CUDA allocator or CPU resident set)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.gib = (torch.cuda.max_memory_allocated(self.device) - self.start) / GIB
            self.total = torch.cuda.max_memory_allocated(self.device) / GIB
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.gib = (peak - self.start) / GIB
            self.total = peak / GIB


def measure_train(device, amp, batch, scale, steps):
    """-> {'ms', 'peak_gib', 'total_gib'} of training steps of `batch` (image, caption) pairs."""
    model = full_model(device, amp, scale)
    model.backbone.set_fixed_blocks(0)
    trainer = Trainer(model, TrainConfig(batch_size=batch), loader=None, dev_files=None, caption_tokenizer=None,
                      logger=None, tb=None)
    trainer.criterion.start_epoch(trainer.config.vse_mean_warmup_epochs)  # past the warm-up: hardest negatives
    model.train()
    gen = torch.Generator().manual_seed(0)
    size = model.config.input_size
    batches = [(torch.randn(batch, 3, size, size, generator=gen) * 50,
                *random_captions(batch, model.bert_config["vocab_size"], gen)) for _ in range(steps + 1)]
    trainer.train_step(*batches[0])  # warm-up: optimizer state and allocator caches exist from here on
    with Peak(device) as peak:
        start = time.perf_counter()
        for images, captions, lengths in batches[1:]:
            trainer.train_step(images, captions, lengths)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / steps
    return {"ms": seconds * 1e3, "peak_gib": peak.gib, "total_gib": peak.total}


def measure_eval(device, amp, batch, scale):
    """-> {'ms', 'peak_gib', 'cells'} of encoding one batch of images without gradients."""
    model = full_model(device, amp, scale).eval()
    size = model.config.input_size
    pixels = torch.randn(batch, 3, size, size) * 50
    with torch.no_grad():
        model.encode_images(pixels[:1])
        with Peak(device) as peak:
            start = time.perf_counter()
            emb = model.encode_images(pixels)
            seconds = time.perf_counter() - start
    return {"ms": seconds * 1e3, "peak_gib": peak.gib, "cells": emb.shape[1], "d": emb.shape[2]}


def in_fresh_process(args, job, batch):
    """Run one measurement in a new interpreter (so the CPU high-water mark is its own) -> its dict."""
    command = [sys.executable, __file__, "--device", args.device, "--amp", args.amp, "--scale", str(args.scale),
               "--steps", str(args.steps), "--_job", job, "--_batch", str(batch)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def linear(points, at):
    (x0, y0), (x1, y1) = points[0], points[-1]
    slope = (y1 - y0) / (x1 - x0)
    return y0 + slope * (at - x0), slope


def report(args):
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    size = int(256 * args.scale)
    print(f"{name}, amp {args.amp}, T = {size}, BUTD ResNet-101 + BERT-base, d 1024, every block training")
    train = {}
    for batch in args.train_batches:
        train[batch] = result = in_fresh_process(args, "train", batch)
        print(f"train step, {batch:3d} images/process: {result['ms']:9.1f} ms, peak +{result['peak_gib']:.2f} GiB "
              f"(process total {result['total_gib']:.2f} GiB); consumes {batch / result['ms'] * 1e3:.1f} images/s")
    if args.extrapolate and len(train) > 1:
        value, slope = linear(sorted((b, r["total_gib"]) for b, r in train.items()), args.extrapolate)
        print(f"  process total, linear in the batch ({slope:.2f} GiB per image): about {value:.1f} GiB at "
              f"{args.extrapolate} images/process (extrapolated, not measured)")
    result = in_fresh_process(args, "eval", args.eval_batch)
    cells, d = result["cells"], result["d"]
    print(f"evaluation: encoding {args.eval_batch} images takes {result['ms']:.1f} ms, peak +{result['peak_gib']:.2f} GiB "
          f"({args.eval_batch / result['ms'] * 1e3:.1f} images/s)")
    images_gib = 5000 * cells * d * 4 / GIB
    captions_gib = 25000 * args.mean_tokens * d * 4 / GIB
    scores_gib = 5000 * 25000 * 4 / GIB
    print(f"a 5000-image split's stored embeddings (computed from the shapes): images 5000 x {cells} x {d} float32 "
          f"{images_gib:.2f} GiB (float16 storage {images_gib / 2:.2f}), captions 25000 x {args.mean_tokens} "
          f"tokens {captions_gib:.2f} GiB, scores {scores_gib:.2f} GiB: "
          f"{images_gib + captions_gib + scores_gib:.2f} GiB in float32 on the host")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"])
    parser.add_argument("--scale", type=float, default=2.0, help="--input_scale_factor (2.0: T = 512)")
    parser.add_argument("--train_batches", type=int, nargs="+", default=[1, 2], help="images per process")
    parser.add_argument("--eval_batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per batch size")
    parser.add_argument("--mean_tokens", type=int, default=14, help="mean caption length (COCO: about 14)")
    parser.add_argument("--extrapolate", type=int, default=0, metavar="B",
                        help="also print the training peak's linear fit at B images per process")
    parser.add_argument("--_job", choices=["train", "eval"], help=argparse.SUPPRESS)
    parser.add_argument("--_batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._job:
        device = resolve_device(args.device)
        job = measure_train(device, args.amp, args._batch, args.scale, args.steps) if args._job == "train" \
            else measure_eval(device, args.amp, args._batch, args.scale)
        print(json.dumps(job))
        return
    report(args)


if __name__ == "__main__":
    main()

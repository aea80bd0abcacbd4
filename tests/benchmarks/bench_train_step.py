"""Time one X-Dim training step (float32 vs bf16 autocast) on random data.

BERT-base's architecture (from the bundled config, random weights: timing does not
depend on the values), 36-region 2048-d features with the training-time region
dropping, captions of 8 to 30 tokens. Prints ms per step, steps per second, peak
device memory and the bf16 / float32 speed ratio, all measured in this run.

    python tests/benchmarks/bench_train_step.py --device cuda             # the paper's batch 128, d 1024
    python tests/benchmarks/bench_train_step.py --device cpu --batch_size 8 --steps 2
"""
import argparse
import os
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


def step_trainer(model, batch_size):
    """A Trainer of `model` with the paper's optimizer and hardest-negative loss, for bare steps."""
    trainer = Trainer(model, TrainConfig(batch_size=batch_size), loader=None, dev_files=None,
                      caption_tokenizer=None, logger=None, tb=None)
    trainer.criterion.start_epoch(trainer.config.vse_mean_warmup_epochs)  # past the warm-up: hardest negatives
    return trainer


def random_batch(batch_size, vocab_size, img_dim, gen, first_id=1000):
    """Images with ~80% of 36 regions kept (zero-padded) and captions of 8-30 tokens
    (ids first_id .. vocab_size - 1)."""
    kept = torch.binomial(torch.full((batch_size,), 36.0), torch.full((batch_size,), 0.8), generator=gen)
    image_lengths = kept.long().clamp(min=1)
    images = torch.zeros(batch_size, int(image_lengths.max()), img_dim)
    for i, n in enumerate(image_lengths.tolist()):
        images[i, :n] = torch.rand(n, img_dim, generator=gen)
    lengths = torch.randint(8, 31, (batch_size,), generator=gen)
    captions = torch.zeros(batch_size, int(lengths.max()), dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        captions[i, :n] = torch.randint(first_id, vocab_size, (n,), generator=gen)
    return images, captions, lengths, image_lengths


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer, batches, warmup):
    """Seconds per step over `batches` after `warmup` steps, and peak device memory (GiB or None)."""
    model = trainer.model.train()
    for batch in batches[:warmup]:
        trainer.train_step(*batch)
    synchronize(model.device)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        trainer.train_step(*batch)
    synchronize(model.device)
    seconds = (time.perf_counter() - start) / (len(batches) - warmup)
    peak = torch.cuda.max_memory_allocated(model.device) / 2 ** 30 if model.device.type == "cuda" else None
    return seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--embed_size", type=int, default=1024)
    parser.add_argument("--img_dim", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bert_path", default=BUNDLED_BERT_BASE, help="BERT config to build (random weights)")
    args = parser.parse_args()

    config = bert_config_dict(args.bert_path)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(args.batch_size, config["vocab_size"], args.img_dim, gen)
               for _ in range(args.warmup + args.steps)]
    results = {}
    for amp in ("none", "bf16"):
        torch.manual_seed(0)
        model_config = ModelConfig(img_dim=args.img_dim, embed_size=args.embed_size, bert=args.bert_path,
                                   bert_config=config)
        model = XDimModel(model_config, amp=amp).to(resolve_device(args.device))
        seconds, peak = time_steps(step_trainer(model, args.batch_size), batches, args.warmup)
        results[amp] = seconds
        name = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "CPU"
        memory = f", peak memory {peak:.1f} GiB" if peak is not None else ""
        print(f"{name} amp={amp:4s} batch {args.batch_size} d {args.embed_size}: "
              f"{seconds * 1e3:8.1f} ms/step ({1 / seconds:.2f} steps/s){memory}", flush=True)
        del model
    print(f"bf16 / float32 speed-up: {results['none'] / results['bf16']:.2f}x")


if __name__ == "__main__":
    main()

"""The raw-image input pipeline's rate: images decoded, augmented and normalised per second.

    python tests/benchmarks/bench_image_pipeline.py                        # T = 512, workers 1 and 2
    python tests/benchmarks/bench_image_pipeline.py --workers 1 2 4 8 16 --images 2000

Writes `--images` JPEGs of 500 x 375 pixels (Flickr30K's typical size; smooth colour fields
plus grain, quality 90, about the bytes of a Flickr30K photo) with 5 captions each in the
raw-image layout, then measures in this process, on one thread:
1. each stage per image (the best of 3 passes over up to 200 images): decoding (Pillow), the training crop + resize to T x T, flip +
   normalisation, and the whole of it, in images/s;
2. the training loader itself (lib.data.images.image_train_loader: decoding, augmentation,
   normalisation, caption tokenisation, batching) with 0 workers (in this process: the rate
   of one worker) and with each `--workers` N, in images/s, timed after the first 2N + 1
   batches (start-up and prefetching) over up to 8N batches.
The folder is removed at the end. How many workers a GPU needs: docs/benchmarks.md.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
import timeit

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from lib.data import images  # noqa: E402
from lib.data.precomp import CaptionTokenizer, item_rng, set_loader_epoch  # noqa: E402
from lib.data.synthetic import demo_vocabulary, write_tiny_bert  # noqa: E402
from lib.model.bert import load_tokenizer  # noqa: E402

WIDTH, HEIGHT = 500, 375


def photo_like(rng):
    """(375, 500, 3) uint8: a smooth random colour field with fine grain, JPEG-sized like a photo."""
    coarse = rng.uniform(0, 255, (HEIGHT // 25 + 2, WIDTH // 25 + 2, 3))
    smooth = images.resize_linear(torch.from_numpy(coarse).permute(2, 0, 1).float(), WIDTH)
    field = smooth[:, :HEIGHT].permute(1, 2, 0).numpy()
    return np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)


def write_dataset(folder, n_images):
    """The raw-image layout under `folder` with `n_images` JPEGs -> (data_path, mean file bytes)."""
    import json

    from PIL import Image
    data_path = os.path.join(folder, "bench")
    os.makedirs(os.path.join(data_path, "flickr30k-images"), exist_ok=True)
    os.makedirs(os.path.join(data_path, "precomp"), exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = []
    for i in range(n_images):
        path = os.path.join(data_path, "flickr30k-images", f"{i}.jpg")
        Image.fromarray(photo_like(rng)).save(path, quality=90)
        sizes.append(os.path.getsize(path))
    with open(os.path.join(data_path, "id_mapping.json"), "w") as f:
        json.dump({str(i): f"{i}.jpg" for i in range(n_images)}, f)
    with open(os.path.join(data_path, "precomp", "train_ids.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in range(n_images)))
    with open(os.path.join(data_path, "precomp", "train_caps.txt"), "w") as f:
        f.write("".join("a red dog and a cat next to a blue car in the scene\n" for _ in range(5 * n_images)))
    return data_path, float(np.mean(sizes))


def per_second(function, items, repeats=3):
    """Calls of `function(item)` per second over `items`: the best of `repeats` passes (the least
    disturbed by other jobs on the machine)."""
    def one_pass():
        for item in items:
            function(item)
    return len(items) / min(timeit.repeat(one_pass, number=1, repeat=repeats))


def stage_rates(split, config, n):
    """images/s of each stage on one thread over the first `n` images."""
    paths = split.image_paths[:n]
    decoded = [images.read_rgb(path)[0] for path in paths]
    resized = [images.resize_linear(torch.from_numpy(rgb).permute(2, 0, 1).float(), config.size) for rgb in decoded]

    def crop_resize(index):
        rgb = decoded[index]
        top, left, h, w = images.crop_window(rgb.shape[0], rgb.shape[1], item_rng(0, 0, index))
        return images.resize_linear(torch.from_numpy(np.ascontiguousarray(rgb[top:top + h, left:left + w]))
                                    .permute(2, 0, 1).float(), config.size)

    return {
        "decode (Pillow)": per_second(images.read_rgb, paths),
        "crop + resize": per_second(crop_resize, range(n)),
        "flip + normalise": per_second(lambda p: images.normalize(p.flip(2), config.normalization), resized),
        "all (decode .. normalise)": per_second(
            lambda i: images.pixel_tensor(images.read_rgb(paths[i])[0], config, item_rng(0, 0, i)), range(n)),
    }


def loader_rate(split, encoder, config, workers, batch_size, n_batches):
    """images/s of image_train_loader with `workers` processes over `n_batches` batches, timed once
    the first 2 * workers + 1 (the start-up and the prefetched ones) have arrived."""
    loader = images.image_train_loader(split, encoder, batch_size, config, workers=workers, seed=0)
    set_loader_epoch(loader, 0)
    iterator = iter(loader)
    for _ in range(2 * workers + 1):
        next(iterator)
    start = time.perf_counter()
    count = sum(len(next(iterator)[0]) for _ in range(n_batches))
    rate = count / (time.perf_counter() - start)
    del iterator
    return rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400, help="JPEGs written (5 captions each)")
    parser.add_argument("--input_scale_factor", type=float, default=2.0, help="T = int(256 * this): 512")
    parser.add_argument("--normalization", default="detector", choices=images.NORMALIZATIONS)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader worker counts to time")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "bench_image_pipeline"), help="where to write (removed after)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = images.PixelConfig(int(images.BASE_SIZE * args.input_scale_factor), args.normalization)
    try:
        data_path, mean_bytes = write_dataset(args.folder, args.images)
        split = images.open_image_split(data_path, "bench", "train")
        encoder = CaptionTokenizer(load_tokenizer(write_tiny_bert(os.path.join(args.folder, "bert"), demo_vocabulary(),
                                                                with_weights=False)), 64)
        print(f"{args.images} JPEGs of {WIDTH} x {HEIGHT}, mean {mean_bytes / 1000:.0f} kB; T = {config.size}, "
              f"{config.normalization}; torch {torch.__version__}, {os.cpu_count()} CPUs")
        print("\none thread, per image:")
        for stage, rate in stage_rates(split, config, min(args.images, 200)).items():
            print(f"  {stage:28s} {rate:8.1f} images/s  {1000 / rate:6.2f} ms")
        available = 5 * args.images // args.batch_size
        print(f"\nimage_train_loader, batch {args.batch_size}, timed in the steady state:")
        one = loader_rate(split, encoder, config, 0, args.batch_size, min(available - 1, 16))
        print(f"  {'0 workers (one worker)':28s} {one:8.1f} images/s")
        for workers in args.workers:
            n_batches = min(available - 2 * workers - 1, 8 * workers)
            if n_batches < 2 * workers:
                print(f"  {workers} workers: too few images for a steady state, pass --images "
                      f"{(10 * workers + 1) * args.batch_size // 5 + 1}")
                continue
            rate = loader_rate(split, encoder, config, workers, args.batch_size, n_batches)
            print(f"  {f'{workers} workers':28s} {rate:8.1f} images/s  ({rate / one:.2f} x one worker)")
    finally:
        shutil.rmtree(args.folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

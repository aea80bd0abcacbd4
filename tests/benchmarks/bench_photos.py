"""Benchmark of searching a folder of photos (run by hand, not by pytest).

    python tests/benchmarks/bench_photos.py                        # both parts
    python tests/benchmarks/bench_photos.py --parts tiny --photos 500

Writes a folder of synthetic JPEG photos (--photo_size pixels, shaded colour fields with
noise and a few rectangles), then, for each part, through the library calls that
`retrieve.py build --image_folder`, `build --update` and `query --html` make:

1. tiny: the tests' raw-image model (ResNet-101 layout at stem width 4, T = 128, a 4 x 4
   grid, d = 16, a tiny random BERT) over --photos photos: what the pipeline costs around
   the network (decoding, resizing, writing the index, FAISS, the page).
2. paper: the paper's sizes with random weights (the BUTD ResNet-101 at full width,
   T = 512, a 16 x 16 grid, d = 1024, BERT-base architecture) over --paper_photos photos:
   the per-photo cost and index size a real checkpoint has.

Printed per part: photos decoded per second (Pillow decode + evaluation resize alone),
photos indexed per second (decode + encode + write), index bytes per photo, an
update that adds and removes a tenth of the photos, text query latency (median and
90th percentile of --queries queries, top 10), and writing the results page with its 10
thumbnails. Timings depend on what else runs on the cores; the load average is printed.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from lib.data.images import PixelConfig, pixel_tensor, read_rgb  # noqa: E402
from lib.data.synthetic import demo_vocabulary, write_tiny_bert  # noqa: E402
from lib.model.bert import BUNDLED_BERT_BASE, bert_config_dict  # noqa: E402
from lib.model.config import ModelConfig  # noqa: E402
from lib.model.xdim_model import XDimModel  # noqa: E402
from lib.retrieval import folder as folders  # noqa: E402
from lib.retrieval import html  # noqa: E402
from lib.retrieval import index as retrieval  # noqa: E402
from lib.retrieval.shortlist import MeanPooling  # noqa: E402

PARTS = ("tiny", "paper")
QUERIES = ["a red car near a blue dog", "two cats on a green bench", "a man riding a horse on the beach",
           "a white boat on the water", "children playing football in a park"]


def write_photos(root, n, size, seed=0):
    """`n` JPEG photos of `size` (h, w) in 10 subfolders."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    h, w = size
    for k in range(n):
        base = rng.integers(0, 256, 3)[None, None] + np.linspace(-50, 50, w)[None, :, None]
        pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        for _ in range(3):
            top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
            pixels[top:top + h // 4, left:left + w // 4] = rng.integers(0, 256, 3)
        path = os.path.join(root, f"album{k % 10}", f"photo{k:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)


def tiny_model(workdir):
    torch.manual_seed(0)
    bert = write_tiny_bert(os.path.join(workdir, "bert"), demo_vocabulary() + sorted(
        {w for q in QUERIES for w in q.split()}))
    config = ModelConfig(img_dim=128, embed_size=16, precomp_enc_type="backbone", backbone_width=4,
                         backbone_path="none", input_scale_factor=0.5, bert=bert)
    return XDimModel(config, bert_path=bert).eval()


def paper_model(workdir):
    torch.manual_seed(0)
    config = ModelConfig(img_dim=2048, embed_size=1024, precomp_enc_type="backbone", backbone_path="none",
                         input_scale_factor=2.0, bert=BUNDLED_BERT_BASE,
                         bert_config=bert_config_dict(BUNDLED_BERT_BASE))
    return XDimModel(config).eval()


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def load():
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def run_part(name, model, photos_root, workdir, queries):
    n = len(folders.scan_image_folder(photos_root))
    encoder = MeanPooling(model.config.embed_size)
    config = PixelConfig.for_model(model.config)
    files = folders.scan_image_folder(photos_root)
    start = time.perf_counter()
    for f in files:
        pixel_tensor(read_rgb(os.path.join(photos_root, f.path))[0], config)
    decode = time.perf_counter() - start
    print(f"[{name}] T = {config.size}, d = {model.config.embed_size}, {n} photos; {load()}")
    print(f"[{name}] decode + resize alone: {n / decode:.1f} photos/s")

    index = os.path.join(workdir, f"index-{name}")
    start = time.perf_counter()
    built = folders.build_folder_index(model, encoder, index, photos_root, batch_size=16, progress=False)
    build = time.perf_counter() - start
    size = folder_bytes(index)
    print(f"[{name}] build: {n / build:.1f} photos/s ({build:.1f} s, {built.encoded} encoded); index "
          f"{size / n / 1024:.1f} KiB per photo ({size / 2**20:.1f} MiB; regions.npy "
          f"{os.path.getsize(os.path.join(index, 'regions.npy')) / n / 1024:.1f} KiB per photo); {load()}")

    changed = sorted(files)[::10]
    for f in changed[: len(changed) // 2]:
        os.remove(os.path.join(photos_root, f.path))
    write_photos(os.path.join(photos_root, "added"), len(changed) - len(changed) // 2, (240, 320), seed=9)
    start = time.perf_counter()
    update = folders.build_folder_index(model, encoder, index, photos_root, batch_size=16, update=True,
                                        progress=False)
    print(f"[{name}] update: {update.encoded} added, {update.dropped} removed, {update.kept} kept in "
          f"{time.perf_counter() - start:.1f} s (a full build took {build:.1f} s); {load()}")

    gallery = retrieval.GalleryIndex.open(index, model, encoder)
    gallery.search_text(queries[0], 10, 100)  # tokenizer load, warm-up
    seconds = []
    for k in range(len(queries)):
        start = time.perf_counter()
        hits = gallery.search_text(queries[k], 10, 100)
        seconds.append(time.perf_counter() - start)
    print(f"[{name}] text query, top 10 of {len(gallery)}: median {1000 * np.median(seconds):.1f} ms, "
          f"90th percentile {1000 * np.percentile(seconds, 90):.1f} ms; {load()}")
    page = os.path.join(workdir, f"page-{name}.html")
    start = time.perf_counter()
    sections = [html.PageSection(queries[-1], None, [html.PageHit(h.rank, h.score, h.item,
                                                                  html.photo_path(photos_root, h.item))
                                                     for h in hits], seconds[-1])]
    html.write_results_page(page, sections, "bench", len(gallery))
    print(f"[{name}] results page with 10 thumbnails: {1000 * (time.perf_counter() - start):.0f} ms, "
          f"{os.path.getsize(page) / 1024:.0f} KiB")
    gallery.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--photos", type=int, default=300, help="photos of the tiny part")
    parser.add_argument("--paper_photos", type=int, default=24, help="photos of the paper-sized part")
    parser.add_argument("--photo_size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs")
    queries = [QUERIES[k % len(QUERIES)] for k in range(args.queries)]
    workdir = tempfile.mkdtemp(prefix="bench_photos-")
    try:
        for name in args.parts:
            photos_root = os.path.join(workdir, f"photos-{name}")
            write_photos(photos_root, args.photos if name == "tiny" else args.paper_photos, tuple(args.photo_size))
            model = tiny_model(workdir) if name == "tiny" else paper_model(workdir)
            run_part(name, model, photos_root, workdir, queries)
    finally:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()

"""Benchmark of two-stage retrieval (run by hand, not by pytest).

    python tests/benchmarks/bench_retrieval.py                       # all three parts
    python tests/benchmarks/bench_retrieval.py --parts demo coco --coco_images 1000

Each part runs in its own process (so its peak memory is its own) and prints
figures measured in that one run:

1. demo: the demo checkpoint (sh train_demo.sh) on the demo test split. Exhaustive
   X-Dim R@1 (lib.evaluation.scoring, every pair) against two stages answered query by
   query through lib.retrieval.index (an index built over the split's images for the
   1000 caption queries, one over its captions for the 200 image queries), with
   the shortlist head beside the checkpoint (retrieve.py distill) and, for
   comparison, with mean pooling.
2. coco: the same on a COCO-5K-shaped synthetic split: 5000 demo-style images
   (36 regions, the demo's generator with another seed) x 25000 captions, scored
   by the demo checkpoint (d = 64). The exhaustive reference scores 125 million
   pairs: the slow part.
3. latency: a paper-sized model (d = 1024, BERT-base architecture, random
   weights) over a 100,000-image synthetic gallery: index build time, disk size,
   text-to-image query latency (median and 90th percentile over --queries
   queries), exact (flat) and HNSW stage one, peak memory of build and queries.
   Region features are 64-d here (2048 in BUTD) to keep the synthetic input at
   0.9 GB; only the image encoder's first layer, i.e. build time, depends on it.

The pair fraction of a direction is K / gallery size: the share of that
direction's pair scores X-Dim computes. Timings depend on what else runs on the
cores; the load average is printed with them.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from lib.data.butd import NpyWriter  # noqa: E402
from lib.data.precomp import CaptionTokenizer, open_split  # noqa: E402
from lib.data.synthetic import demo_prototypes, write_demo_split  # noqa: E402
from lib.evaluation import metrics, scoring
from lib.formats.checkpoint import weights_fingerprint  # noqa: E402
from lib.model.bert import BUNDLED_BERT_BASE, bert_config_dict, load_tokenizer  # noqa: E402
from lib.model.config import ModelConfig  # noqa: E402
from lib.model.encoders import ImageEncoder  # noqa: E402
from lib.model.xdim_model import XDimModel  # noqa: E402
from lib.retrieval import index as retrieval
from lib.retrieval import shortlist  # noqa: E402

PARTS = ("demo", "coco", "latency")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run")
    parser.add_argument("--model_path", default=os.path.join(ROOT, "runs/demo/checkpoint/model_best.pth"),
                        help="demo checkpoint (parts demo and coco)")
    parser.add_argument("--data_path", default=os.path.join(ROOT, "data/demo"), help="demo data folder")
    parser.add_argument("--demo_k", type=int, default=3, help="shortlist on the 200-image demo test split")
    parser.add_argument("--coco_images", type=int, default=5000, help="images of the COCO-shaped split (x5 captions)")
    parser.add_argument("--coco_k", type=int, default=50, help="shortlist on the COCO-shaped split")
    parser.add_argument("--sweep", type=int, nargs="+", default=[1, 3, 10, 100, 1000],
                        help="shortlist sizes evaluated through eval.py's path (from the exhaustive scores)")
    parser.add_argument("--gallery", type=int, default=100_000, help="images of the latency gallery")
    parser.add_argument("--latency_k", type=int, default=retrieval.DEFAULT_SHORTLIST, help="shortlist per query")
    parser.add_argument("--queries", type=int, default=50, help="timed text queries")
    parser.add_argument("--threads", type=int, default=2, help="torch and FAISS threads")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--part", choices=PARTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=("build", "query"), default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def peak_rss_gib():
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def load():
    return "load average %.1f %.1f %.1f" % os.getloadavg()


# ---------------------------------------------------------------- accuracy parts

def library_recalls(model, encoder, split, workdir, k):
    """R@1 (percent) of the two stages answered query by query through GalleryIndex.

    -> (text-to-image R@1, image-to-text R@1, seconds per text query, seconds per image query).
    """
    cpi = split.captions_per_image
    folders = {}
    for gallery, source in (("images", split.images_path), ("captions", split.captions_path)):
        folders[gallery] = os.path.join(workdir, f"{gallery}-{encoder.describe()['kind']}")
        shutil.rmtree(folders[gallery], ignore_errors=True)
        retrieval.build_index(model, encoder, folders[gallery], progress=False, **{gallery: source})
    images = retrieval.GalleryIndex.open(folders["images"], model, encoder)
    start = time.time()
    t2i = np.mean([images.search_text(text, 1, k)[0].index == c // cpi for c, text in enumerate(split.captions)])
    text_seconds = (time.time() - start) / split.n_captions
    captions = retrieval.GalleryIndex.open(folders["captions"], model, encoder)
    start = time.time()
    i2t = np.mean([captions.search_image(split.images[i], None, 1, k)[0].index // cpi == i
                   for i in range(split.n_images)])
    image_seconds = (time.time() - start) / split.n_images
    return 100 * t2i, 100 * i2t, text_seconds, image_seconds


def exhaustive_scores(model, img_emb, captions, workdir, name, fingerprint):
    """The split's full X-Dim score matrix -> (sims, seconds it took, load average then).

    Kept in `workdir` with the weights' fingerprint, so a rerun with --workdir reuses it.
    """
    cache = os.path.join(workdir, f"{name}_exhaustive")
    if os.path.isfile(cache + ".json"):
        with open(cache + ".json") as f:
            saved = json.load(f)
        if saved["fingerprint"] == fingerprint and saved["shape"] == [len(img_emb), len(captions)]:
            return np.load(cache + ".npy"), saved["seconds"], saved["load"] + ", reused from " + cache
    start = time.time()
    sims = scoring.model_sims(model, img_emb, captions, progress=False)
    seconds, when = time.time() - start, load()
    np.save(cache + ".npy", sims)
    with open(cache + ".json", "w") as f:
        json.dump({"fingerprint": fingerprint, "shape": list(sims.shape), "seconds": seconds, "load": when}, f)
    return sims, seconds, when


def compare_on_split(model, model_path, split, workdir, k, name, sweep):
    """Exhaustive vs two-stage R@1 on one split: query by query with the checkpoint's head at K = `k`,
    and through eval.py's path for the K of `sweep` with the head and with mean pooling."""
    encoder = CaptionTokenizer(load_tokenizer(model.bert_path), model.bert_config["max_position_embeddings"])
    fingerprint = weights_fingerprint(model.state_dict())
    img_emb, captions = scoring.encode_split(model, split, encoder, progress=False)
    sims, exhaustive_seconds, when = exhaustive_scores(model, img_emb, captions, workdir, name, fingerprint)
    exhaustive = metrics.evaluate_sims(sims, split.captions_per_image)[0]
    n_img, n_cap = sims.shape
    print(f"[{name}] {n_img} images x {n_cap} captions, exhaustive X-Dim: {n_img * n_cap:,} pair scores "
          f"in {exhaustive_seconds:.1f} s ({when})")
    print(f"[{name}]   exhaustive R@1: text-to-image {exhaustive['t2i_r1']:.2f}, image-to-text "
          f"{exhaustive['i2t_r1']:.2f}")
    head = shortlist.global_encoder(model, fingerprint, model_path)
    kind = head.describe()["kind"]
    t2i, i2t, text_s, image_s = library_recalls(model, head, split, workdir, k)
    print(f"[{name}]   two stages, K = {k}, {kind} vectors, query by query through lib.retrieval.index: X-Dim scores "
          f"{100 * k / n_img:.2f}% of the text-to-image and {100 * k / n_cap:.2f}% of the image-to-text pair scores")
    print(f"[{name}]     R@1 text-to-image {t2i:.2f} ({t2i - exhaustive['t2i_r1']:+.2f} vs exhaustive), "
          f"image-to-text {i2t:.2f} ({i2t - exhaustive['i2t_r1']:+.2f})")
    print(f"[{name}]     per query: text {1000 * text_s:.1f} ms, image {1000 * image_s:.1f} ms; "
          f"exhaustive per text query {1000 * exhaustive_seconds / n_cap:.1f} ms (amortised)")
    encoders = [head, shortlist.MeanPooling(model.config.embed_size)] if kind == "head" else [head]
    for encoder_ in encoders:
        img_global = shortlist.image_vectors(encoder_, img_emb)
        cap_global = shortlist.caption_vectors(encoder_, captions)
        cells = []
        for sweep_k in sorted({*sweep, k}):
            if sweep_k <= n_cap:
                masked, union = retrieval.two_stage_metrics(sims, img_global, cap_global, sweep_k,
                                                            split.captions_per_image)
                cells.append(f"K={sweep_k}: {masked['t2i_r1']:.2f} / {masked['i2t_r1']:.2f} "
                             f"({100 * union:.2f}%)")
        print(f"[{name}]   eval.py --shortlist K, {encoder_.describe()['kind']} vectors, R@1 text-to-image / "
              f"image-to-text (union of pair scores): " + " | ".join(cells))


def part_demo(args, workdir):
    model = XDimModel.from_checkpoint(args.model_path, device="cpu")
    split = open_split(args.data_path, "demo_precomp", "test", img_dim=model.config.img_dim)
    compare_on_split(model, args.model_path, split, workdir, args.demo_k, "demo", args.sweep)


def part_coco(args, workdir):
    model = XDimModel.from_checkpoint(args.model_path, device="cpu")
    folder = os.path.join(workdir, "coco_shaped")
    os.makedirs(folder, exist_ok=True)
    write_demo_split(folder, "test5k", args.coco_images, demo_prototypes(model.config.img_dim, seed=0),
                     np.random.default_rng(12345))
    split = open_split(workdir, "coco_shaped", "test5k", img_dim=model.config.img_dim)
    compare_on_split(model, args.model_path, split, workdir, args.coco_k, "coco", args.sweep)


# ---------------------------------------------------------------- latency part

def paper_sized_model():
    """d = 1024, BERT-base architecture with random weights, 64-d region features."""
    torch.manual_seed(0)
    model = XDimModel(ModelConfig(img_dim=64, embed_size=1024, bert=BUNDLED_BERT_BASE,
                                  bert_config=bert_config_dict(BUNDLED_BERT_BASE)))
    model.val_start()
    return model


def write_synthetic_gallery(path, n_images, img_dim, chunk=5000):
    writer = NpyWriter(path, (n_images, 36, img_dim), np.float32)
    rng = np.random.default_rng(0)
    for start in range(0, n_images, chunk):
        writer.write(rng.standard_normal((min(chunk, n_images - start), 36, img_dim), dtype=np.float32))
    writer.close()


def part_latency_build(args, workdir):
    model = paper_sized_model()
    head = shortlist.ShortlistHead(1024).eval()
    features = os.path.join(workdir, "gallery_ims.npy")
    start = time.time()
    write_synthetic_gallery(features, args.gallery, model.config.img_dim)
    print(f"[latency] wrote {args.gallery:,} synthetic images (36 x 64 float32) in {time.time() - start:.0f} s")
    flat = os.path.join(workdir, "index-flat")
    start = time.time()
    retrieval.build_index(model, head, flat, images=features, index_type="flat", batch_size=256, progress=False)
    sizes = {name: os.path.getsize(os.path.join(flat, name)) / 2 ** 20 for name in os.listdir(flat)}
    print(f"[latency] build (encode {args.gallery:,} images, write, exact FAISS index): {time.time() - start:.0f} s "
          f"({load()}); index folder {sum(sizes.values()) / 1024:.2f} GiB: "
          + ", ".join(f"{name} {size:.0f} MiB" for name, size in sorted(sizes.items(), key=lambda x: -x[1])[:3]))
    # The same gallery with an HNSW stage one: only faiss.index differs, the rest is linked.
    hnsw = os.path.join(workdir, "index-hnsw")
    os.makedirs(hnsw)
    for name in os.listdir(flat):
        if name not in ("faiss.index", "manifest.json"):
            os.link(os.path.join(flat, name), os.path.join(hnsw, name))
    start = time.time()
    retrieval.write_faiss_index(hnsw, head.size, "hnsw")
    print(f"[latency] HNSW stage-one index over the same vectors: {time.time() - start:.0f} s, "
          f"{os.path.getsize(os.path.join(hnsw, 'faiss.index')) / 2 ** 20:.0f} MiB ({load()})")
    with open(os.path.join(flat, "manifest.json")) as f:
        manifest = dict(json.load(f), index_type="hnsw")
    with open(os.path.join(hnsw, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    print(f"[latency] build peak resident memory {peak_rss_gib():.2f} GiB")
    torch.save(head.state_dict(), os.path.join(workdir, "head.pt"))


def evict_from_page_cache(path):
    """Drop one file's pages from the OS page cache (that file only), so the next reads hit the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed_queries(gallery, texts, k, cold_file=None):
    """Seconds of each text query; with `cold_file`, its pages are evicted before every query."""
    seconds = []
    for text in texts:
        if cold_file:
            evict_from_page_cache(cold_file)
        start = time.time()
        gallery.search_text(text, 10, k)
        seconds.append(time.time() - start)
    return np.array(seconds)


def part_latency_query(args, workdir):
    model = paper_sized_model()
    head = shortlist.ShortlistHead(1024).eval()
    head.load_state_dict(torch.load(os.path.join(workdir, "head.pt"), weights_only=True))
    rng = np.random.default_rng(1)
    words = [w for w in load_tokenizer(BUNDLED_BERT_BASE).vocab if w.isalpha() and len(w) > 2]
    texts = [" ".join(rng.choice(words, size=rng.integers(6, 15))) for _ in range(args.queries + 1)]
    for index_type in ("flat", "hnsw"):
        folder = os.path.join(workdir, f"index-{index_type}")
        gallery = retrieval.GalleryIndex.open(folder, model, head)
        gallery.search_text(texts[0], 10, args.latency_k)  # first query: tokenizer load, warm-up
        runs = [("warm", None)] + ([("cold", os.path.join(folder, "regions.npy"))] if index_type == "flat" else [])
        for cache, cold_file in runs:
            seconds = timed_queries(gallery, texts[1:], args.latency_k, cold_file)
            print(f"[latency] text-to-image over {len(gallery):,} images ({index_type}, K = {args.latency_k}, "
                  f"region embeddings {cache} in the page cache): median {1000 * np.median(seconds):.0f} ms, "
                  f"90th percentile {1000 * np.percentile(seconds, 90):.0f} ms, "
                  f"target 1000 ms: {'MET' if np.median(seconds) <= 1 else 'MISSED'} ({load()})")
    stage_times(model, head, gallery, texts[1], args.latency_k)
    encoder_throughput()
    print(f"[latency] query process peak resident memory {peak_rss_gib():.2f} GiB (model, FAISS index, "
          f"touched index pages)")


def encoder_throughput(n_images=500):
    """Images per second through an image encoder of 2048-d BUTD features at d = 1024 (index build's main cost)."""
    torch.manual_seed(0)
    encoder = ImageEncoder(2048, 1024).eval()
    images = torch.randn(n_images, 36, 2048)
    with torch.no_grad():
        encoder(images[:8])
        start = time.time()
        for i0 in range(0, n_images, 128):
            encoder(images[i0:i0 + 128])
    rate = n_images / (time.time() - start)
    print(f"[latency] image encoder on 2048-d BUTD features, d = 1024: {rate:.0f} images/s ({load()})")


def stage_times(model, head, gallery, text, k, repeats=5):
    """Where one query's time goes: text encoder, stage one, gathering K rows, X-Dim on them."""
    ids = torch.tensor([gallery.caption_tokenizer().encode(text)])
    lens = torch.tensor([ids.shape[1]])
    timings = {"encode text": [], "stage one (FAISS)": [], "gather K regions": [], "X-Dim on K": []}
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.time()
            cap = model.encode_captions(ids, lens)
            query = head.captions(cap, lens).numpy()
            t1 = time.time()
            _, candidates = retrieval.faiss_search(gallery.faiss_index, query, k)
            t2 = time.time()
            regions = torch.from_numpy(gallery.embeddings[0].rows(candidates[0])).float()
            t3 = time.time()
            model.forward_sim(regions, cap, lens)
            t4 = time.time()
            for name, value in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                timings[name].append(value)
    print("[latency] one query by stage (median of %d, warm page cache): " % repeats
          + ", ".join(f"{name} {1000 * np.median(v):.1f} ms" for name, v in timings.items()))


# ---------------------------------------------------------------- driver

def run_part(args):
    """One part (or one stage of the latency part) in this process."""
    torch.set_num_threads(args.threads)
    retrieval.import_faiss().omp_set_num_threads(args.threads)
    if args.part == "demo":
        part_demo(args, args.workdir)
    elif args.part == "coco":
        part_coco(args, args.workdir)
    elif args.stage == "build":
        part_latency_build(args, args.workdir)
    else:
        part_latency_query(args, args.workdir)


def main():
    args = parse_args()
    if args.part:
        return run_part(args)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_retrieval_")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} threads; {load()}")
    try:
        for part in args.parts:
            for stage in (["build", "query"] if part == "latency" else ["query"]):
                start = time.time()
                subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--part", part,
                                "--stage", stage, "--workdir", workdir],
                               check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
                print(f"[{part}] {stage} process took {time.time() - start:.0f} s")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

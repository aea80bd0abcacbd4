"""Benchmark of the X-Dim similarity and of evaluation memory (run by hand, not by pytest).

    python tests/benchmarks/bench_similarity.py [--device cuda] [--n_img 40] ...

In one process, on identical inputs (d = 1024, 36 regions, captions of 8..30
tokens, 5 captions per image made to match their image so recalls mean
something):
1. speed: lib.model.similarity.xdim.XDimSimilarity (float32, and under bf16 autocast as
   forward_sim runs it with --amp bf16) against a baseline written here the
   official way (one caption at a time, words times a dense diag(delta) matrix),
   their agreement, and recalls under float32 vs bf16;
2. efficiency: irreducible FLOPs (2 * n_img * sum(L) * d^2, step 5's d x d
   product) over our time, as a share of the torch.mm rate measured here;
3. memory: peak memory of the real encode + score path (lib.evaluation.scoring) on a
   COCO-5K-shaped split (5000 images x 25000 captions) with a tiny model, and
   the projected caption storage of COCO 5K at d = 1024.
"""
import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lib.evaluation import (
    metrics,
    scoring,  # noqa: E402
)
from lib.model.similarity.xdim import XDimSimilarity  # noqa: E402

EPS = 1e-8


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--n_img", type=int, default=40, help="images in the speed test")
    parser.add_argument("--captions_per_image", type=int, default=5,
                        help="captions per image in the speed test (n_cap = n_img x this)")
    parser.add_argument("--d", type=int, default=1024, help="embedding size in the speed test")
    parser.add_argument("--regions", type=int, default=36, help="regions per image")
    parser.add_argument("--min_len", type=int, default=8, help="shortest caption (tokens)")
    parser.add_argument("--max_len", type=int, default=30, help="longest caption (tokens)")
    parser.add_argument("--noise", type=float, default=0.3,
                        help="word noise in the speed test (0.3 keeps recalls off 100 percent)")
    parser.add_argument("--mem_images", type=int, default=5000, help="images in the memory test (x5 captions)")
    parser.add_argument("--mem_d", type=int, default=16, help="embedding size in the memory test")
    parser.add_argument("--mem_regions", type=int, default=2, help="regions per image in the memory test")
    parser.add_argument("--mem_max_words", type=int, default=3,
                        help="captions of 1..this many words in the memory test (scoring time grows with it)")
    parser.add_argument("--mem_img_dim", type=int, default=16, help="region feature size in the memory test")
    parser.add_argument("--mean_tokens", type=float, default=14.0,
                        help="mean caption length for the COCO 5K storage projection")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each method (the fastest counts: the CPU may be shared)")
    parser.add_argument("--recall_images", type=int, default=100,
                        help="images (x captions_per_image captions) for the float32-vs-bf16 recall check")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top operators of forward_sim (float32 and bf16)")
    parser.add_argument("--skip_memory", action="store_true", help="skip the memory test")
    parser.add_argument("--skip_speed", action="store_true", help="skip the speed test")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 avoids OpenMP stalls when "
                             "other processes share the cores")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats=1):
    """-> (fn(), fastest of `repeats` runs in seconds)."""
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return out, best


# ---------------------------------------------------------------- inputs and baseline

def make_inputs(n_img, cpi, regions, d, min_len, max_len, noise, device, seed):
    """Unit-norm regions (n_img, R, d); captions (n_img*cpi, Lmax, d) whose words
    are noisy mixtures of their image's regions; lengths (n_cap,)."""
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n_img, regions, d, generator=g), dim=-1)
    n_cap = n_img * cpi
    lens = torch.randint(min_len, max_len + 1, (n_cap,), generator=g)
    mix = torch.softmax(3 * torch.randn(n_cap, max_len, regions, generator=g), dim=-1)
    words = mix @ img.repeat_interleave(cpi, dim=0) + noise * torch.randn(n_cap, max_len, d, generator=g)
    words = F.normalize(words, dim=-1) * (torch.arange(max_len) < lens[:, None])[..., None]
    return img.to(device), words.to(device), lens.to(device)


def baseline_weights(E, lam, log_t_mask):
    """The dependency weights written out (docs/method.md): W (d, d), delta (d,)."""
    P = torch.sigmoid(E)
    theta = P.mean(1, keepdim=True) + lam[:, None] * P.std(1, keepdim=True)
    W = torch.tanh(torch.exp(torch.exp(log_t_mask) * (P - theta))) * P
    W = W / (W.norm(dim=1, keepdim=True) + EPS)
    return W, W.sum(0)


def baseline_scores(sim, img, cap, lens):
    """The official way: loop over captions, repeat each caption for every image and
    multiply its words by a dense diag(delta) matrix; (n_img, n_cap)."""
    W, delta = baseline_weights(sim.E, sim.lam, sim.log_t_mask)
    diag = torch.diag(delta)
    t_attn = torch.exp(sim.log_t_attn)
    n_img = img.shape[0]
    out = torch.empty(n_img, cap.shape[0], device=img.device)
    for c in range(cap.shape[0]):
        w = cap[c, :int(lens[c])].unsqueeze(0).repeat(n_img, 1, 1)   # (n, L, d)
        a = torch.tanh(torch.bmm(w @ diag, img.transpose(1, 2)))     # (n, L, R)
        a = F.leaky_relu(a, 0.1)
        a = a / (a.norm(dim=1, keepdim=True) + EPS)
        alpha = torch.softmax(t_attn * a, dim=2)
        u = torch.bmm(alpha, img)
        u = u / (u.norm(dim=2, keepdim=True) + EPS)                  # (n, L, d)
        s = (u * w) @ W.t()
        out[:, c] = (s.sum(2) / (s.norm(dim=2) + EPS)).mean(1)
    return out


def matmul_rate(dtype, device, d, seconds=0.5):
    """Best FLOP/s of torch.mm in `dtype` over a few large shapes (square, and
    (rows, d) x (d, d) like step 5)."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (4096, 4096, 4096), (16384, d, d)):
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        torch.mm(a, b)
        reps, elapsed = 0, 0.0
        synchronize(device)
        start = time.perf_counter()
        while elapsed < seconds:
            torch.mm(a, b)
            reps += 1
            synchronize(device)
            elapsed = time.perf_counter() - start
        best = max(best, 2 * m * k * n * reps / elapsed)
    return best


# ---------------------------------------------------------------- speed

def bf16(fn, device):
    """fn run under bf16 autocast, as forward_sim runs with --amp bf16."""
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return fn()
    return run


def speed_report(args, device):
    torch.manual_seed(args.seed)
    sim = XDimSimilarity(args.d).to(device).eval()
    img, cap, lens = make_inputs(args.n_img, args.captions_per_image, args.regions, args.d,
                                 args.min_len, args.max_len, args.noise, device, args.seed)
    flops = 2 * args.n_img * int(lens.sum()) * args.d ** 2
    print(f"speed: {args.n_img} images x {len(lens)} captions, d={args.d}, R={args.regions}, "
          f"L={args.min_len}..{args.max_len} (sum L={int(lens.sum())}), device {device}, "
          f"fastest of {args.repeats} runs")
    ours_fn = lambda: sim(img, cap, lens)  # noqa: E731
    base_fn = lambda: baseline_scores(sim, img, cap, lens)  # noqa: E731
    for fn in (ours_fn, bf16(ours_fn, device), base_fn):  # warm-up
        fn()
    ours, t_ours = timed(ours_fn, device, args.repeats)
    _, t_bf16 = timed(bf16(ours_fn, device), device, args.repeats)
    base, t_base = timed(base_fn, device, args.repeats)
    rate32 = matmul_rate(torch.float32, device, args.d)
    rate16 = matmul_rate(torch.bfloat16, device, args.d)
    rel = float((ours - base).abs().max() / base.abs().max())
    print(f"  baseline loop, float32 (dense diag):  {t_base:8.3f} s")
    print(f"  ours forward_sim, float32:            {t_ours:8.3f} s   speed-up x{t_base / t_ours:.2f}")
    print(f"  ours forward_sim, bf16 autocast:      {t_bf16:8.3f} s   speed-up x{t_base / t_bf16:.2f} "
          f"vs float32 baseline")
    print(f"  max |ours - baseline| / max |baseline| (float32): {rel:.2e} "
          f"({'OK' if rel <= 1e-5 else 'ABOVE'} 1e-5)")
    print(f"  best torch.mm rate: float32 {rate32 / 1e9:.1f} GFLOP/s, bf16 {rate16 / 1e9:.1f} GFLOP/s")
    print(f"  irreducible FLOPs 2*n_img*sum(L)*d^2 = {flops / 1e9:.1f} GFLOP: float32 "
          f"{flops / t_ours / 1e9:.1f} GFLOP/s = {100 * flops / t_ours / rate32:.0f}% of mm rate; bf16 "
          f"{flops / t_bf16 / 1e9:.1f} GFLOP/s = {100 * flops / t_bf16 / rate16:.0f}% of bf16 mm rate "
          f"({100 * flops / t_bf16 / rate32:.0f}% of float32 mm rate)")
    recall_report(args, sim, device)
    if args.profile:
        profile_report(ours_fn, device, "float32")
        profile_report(bf16(ours_fn, device), device, "bf16 autocast")


def recall_report(args, sim, device):
    """Recalls of float32 vs bf16-autocast scores on eval-like data."""
    img, cap, lens = make_inputs(args.recall_images, args.captions_per_image, args.regions, args.d,
                                 args.min_len, args.max_len, args.noise, device, args.seed + 1)
    s32 = sim(img, cap, lens).float().cpu().numpy()
    s16 = bf16(lambda: sim(img, cap, lens), device)().float().cpu().numpy()
    m32 = metrics.evaluate_sims(s32, args.captions_per_image)[0]
    m16 = metrics.evaluate_sims(s16, args.captions_per_image)[0]
    keys = metrics.METRIC_KEYS[:6]
    worst = round(max(abs(m32[k] - m16[k]) for k in keys), 6)  # recalls are multiples of 100 / n
    print(f"recalls on {args.recall_images} images x {len(lens)} captions (same model):")
    print("  float32: " + " ".join(f"{k}={m32[k]:.1f}" for k in keys))
    print("  bf16:    " + " ".join(f"{k}={m16[k]:.1f}" for k in keys))
    print(f"  largest recall change under bf16: {worst:.2f} ({'OK' if worst <= 0.1 else 'ABOVE'} 0.1); "
          f"max |bf16 - float32| score {np.abs(s16 - s32).max():.2e} (scores span "
          f"{s32.min():.3f}..{s32.max():.3f})")


def profile_report(fn, device, name):
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    sort = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile of forward_sim, {name}:")
    print(prof.key_averages().table(sort_by=sort, row_limit=12))


# ---------------------------------------------------------------- memory

def rss_peak_bytes():
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_rss_peak():
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return rss_peak_bytes()


def write_memory_split(folder, n_img, regions, img_dim, max_words, seed):
    """A testall-like split of n_img images and 5 n_img captions of 1..max_words words (+2 tokens)."""
    from lib.data.synthetic import write_tiny_bert
    rng = np.random.default_rng(seed)
    words = [f"w{k}" for k in range(200)]
    split_dir = os.path.join(folder, "coco_precomp")
    os.makedirs(split_dir)
    np.save(os.path.join(split_dir, "testall_ims.npy"),
            rng.standard_normal((n_img, regions, img_dim), dtype=np.float32))
    with open(os.path.join(split_dir, "testall_caps.txt"), "w") as f:
        for _ in range(5 * n_img):
            f.write(" ".join(rng.choice(words, rng.integers(1, max_words + 1))) + "\n")
    return write_tiny_bert(os.path.join(folder, "bert"), words, seed=seed)


def memory_report(args, device):
    from lib.data.precomp import CaptionTokenizer, open_split
    from lib.model.bert import load_tokenizer
    from lib.model.config import ModelConfig
    from lib.model.xdim_model import XDimModel
    with tempfile.TemporaryDirectory() as folder:
        bert = write_memory_split(folder, args.mem_images, args.mem_regions, args.mem_img_dim,
                                  args.mem_max_words, args.seed)
        model = XDimModel(ModelConfig(img_dim=args.mem_img_dim, embed_size=args.mem_d, bert=bert)).to(device)
        split = open_split(folder, "coco_precomp", "testall", img_dim=args.mem_img_dim)
        encoder = CaptionTokenizer(load_tokenizer(bert), 64)
        exact_peak = reset_rss_peak()
        before = vm_hwm_bytes() if exact_peak else rss_peak_bytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        (img_emb, captions), t_encode = timed(
            lambda: scoring.encode_split(model, split, encoder, batch_size=256, progress=False), device)
        sims, t_score = timed(lambda: scoring.model_sims(model, img_emb, captions, progress=False), device)
        peak = (vm_hwm_bytes() if exact_peak else rss_peak_bytes()) - before
        n_tokens = len(captions.tokens)
        print(f"memory: encode + score {split.n_images} images x {len(captions)} captions "
              f"(d={args.mem_d}, R={args.mem_regions}, {n_tokens} tokens, mean "
              f"{n_tokens / len(captions):.1f}) with lib.evaluation.scoring: encoding {t_encode:.1f} s, "
              f"scoring {t_score:.1f} s")
        print(f"  held: scores {sims.nbytes / 2**20:.1f} MiB, image embeddings "
              f"{img_emb.numel() * img_emb.element_size() / 2**20:.1f} MiB, ragged captions "
              f"{captions.nbytes / 2**20:.1f} MiB")
        print(f"  peak resident-memory increase over the run: {peak / 2**20:.1f} MiB"
              f"{'' if exact_peak else ' (ru_maxrss delta, lower bound)'}")
        if device.type == "cuda":
            print(f"  peak CUDA memory allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.1f} MiB")


def storage_projection(args):
    n_cap, d = 25000, 1024
    tokens = n_cap * args.mean_tokens
    print(f"COCO 5K caption storage at d={d} ({n_cap} captions x mean {args.mean_tokens:g} tokens):")
    print(f"  ragged float32:      {tokens * d * 4 / 1e9:6.2f} GB")
    print(f"  ragged float16/bf16: {tokens * d * 2 / 1e9:6.2f} GB")
    for max_len in (32, 60):
        print(f"  padded float64 (official), max_len {max_len}: {n_cap * max_len * d * 8 / 1e9:6.2f} GB")


def main():
    args = parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    if not args.skip_memory:  # first, so the speed test's large tensors do not hide the peak
        memory_report(args, device)
    storage_projection(args)
    if not args.skip_speed:
        speed_report(args, device)


if __name__ == "__main__":
    main()

"""Benchmark: eval.py in 2 torchrun processes of 1 thread against 1 process of 2 threads (and of 1).

    python tests/benchmarks/bench_distributed_eval.py [--images 1000] [--embed_size 256]

On a COCO-shaped synthetic split (lib.data.synthetic: `--images` images, 5 captions
each, 36 regions of 64 features) and a random X-Dim model of `--embed_size` with the
tiny demo BERT, it runs the same evaluation three times, one after the other:

1. `python eval.py ... --threads 1` (OMP_NUM_THREADS=1), one process, the baseline;
2. `python eval.py ... --threads 2` (OMP_NUM_THREADS=2), one process;
3. `python -m torch.distributed.run --standalone --nproc_per_node 2 eval.py ... --threads 1`
   (OMP_NUM_THREADS=1), two processes on gloo;

and prints each command's wall time (process start-up included), the ratios, the
largest relative difference between the saved score matrices, whether the printed
tables are identical, and the load average after each run (the cores may be shared
with other work, which the figures then include). Run by hand, not by pytest.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from lib.cli.train import default_options  # noqa: E402
from lib.data.synthetic import write_demo_dataset  # noqa: E402
from lib.formats.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from lib.training.trainer import build_model  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images of the split (x5 captions)")
    parser.add_argument("--embed_size", type=int, default=256, help="joint embedding size d")
    parser.add_argument("--batch_size", type=int, default=128, help="encoder batch")
    parser.add_argument("--workdir", default=None, help="folder for the split and outputs (default: a temporary one)")
    return parser.parse_args()


def load():
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def write_inputs(folder, images, embed_size):
    """-> (data_path, data_name, checkpoint path) of the split and a seeded random model."""
    data_path, data_name, bert_path = write_demo_dataset(folder, img_dim=64, sizes={"test": images}, seed=0)
    opt = default_options(embed_size=embed_size, img_dim=64, bert_path=bert_path, device="cpu",
                          data_path=data_path, data_name=data_name, seed=0)
    checkpoint = os.path.join(folder, "model.pth")
    save_checkpoint(make_checkpoint(build_model(opt), 0, 0.0), checkpoint)
    return data_path, data_name, checkpoint


def timed_run(command, threads):
    """-> (wall seconds, stdout) of a command run with OMP_NUM_THREADS=threads; exits on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.workdir or temporary
        data_path, data_name, checkpoint = write_inputs(folder, args.images, args.embed_size)
        common = ["eval.py", "--model_path", checkpoint, "--data_path", data_path, "--data_name", data_name,
                  "--split", "test", "--device", "cpu", "--batch_size", str(args.batch_size), "--workers", "0",
                  "--no_progress"]
        print(f"split: {args.images} images x {5 * args.images} captions, 36 regions; d = {args.embed_size}, "
              f"tiny BERT; {os.cpu_count()} CPU cores; before: {load()}")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        runs = {"1 process x 1 thread": ([sys.executable], 1), "1 process x 2 threads": ([sys.executable], 2),
                "2 processes x 1 thread": (torchrun, 1)}
        seconds, tables, sims = {}, {}, {}
        for name, (launcher, threads) in runs.items():
            path = os.path.join(folder, f"sims{len(sims)}.npy")
            seconds[name], tables[name] = timed_run(launcher + common + ["--threads", str(threads),
                                                                         "--save_sims", path], threads)
            sims[name] = np.load(path)
            print(f"{name + ':':24s}{seconds[name]:7.1f} s  ({load()})")
        reference = sims["1 process x 1 thread"]
        relative = max(float(np.max(np.abs(s - reference) / np.maximum(np.abs(reference), 1e-30)))
                       for s in sims.values())
        two = seconds["2 processes x 1 thread"]
        print(f"ratio 1 process x 2 threads / 2 processes x 1 thread: {seconds['1 process x 2 threads'] / two:.2f}; "
              f"1 process x 1 thread / 2 processes x 1 thread: {seconds['1 process x 1 thread'] / two:.2f}")
        print(f"largest relative score difference to 1 x 1: {relative:.1e}; "
              f"tables identical: {len(set(tables.values())) == 1}")

if __name__ == "__main__":
    main()

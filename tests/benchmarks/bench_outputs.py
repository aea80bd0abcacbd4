"""What the output rule of lib/formats/atomic.py costs: the lstat of output_target and the stats of
check_outputs, against the atomic write they guard, all measured in this run.

Writes `--files` small JSON files (`--bytes` each) and one score matrix through the helper, and
times the rule's own calls (output_target, check_outputs of an existing output against a
checkpoint and a split's two files) on the same paths. Prints microseconds per call and each
cost as a share of the write.

    python tests/benchmarks/bench_outputs.py
    python tests/benchmarks/bench_outputs.py --files 5000 --bytes 200 --matrix 1000 5000
"""
import argparse
import os
import shutil
import sys
import tempfile
import timeit

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from lib.evaluation.score_files import save_score_file  # noqa: E402
from lib.formats import atomic  # noqa: E402


def per_call(action, paths, repeat=3):
    """Best of `repeat` passes of action(path) over `paths` -> seconds per call."""
    def one_pass():
        for path in paths:
            action(path)
    return min(timeit.repeat(one_pass, number=1, repeat=repeat)) / len(paths)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="small JSON files written")
    parser.add_argument("--bytes", type=int, default=1000, help="size of each JSON file")
    parser.add_argument("--matrix", type=int, nargs=2, default=(1000, 5000), metavar=("IMAGES", "CAPTIONS"),
                        help="shape of the float32 score matrix written with save_score_file")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-outputs-")
    paths = [os.path.join(folder, f"out_{i}.json") for i in range(args.files)]
    inputs = [os.path.join(folder, name) for name in ("model.pth", "test_ims.npy", "test_caps.txt")]
    for path in inputs:
        open(path, "wb").close()
    text = "x" * max(0, args.bytes - 2)
    write = per_call(lambda path: atomic.write_json(path, text), paths)
    target = per_call(atomic.output_target, paths)
    check = per_call(lambda path: atomic.check_outputs([("--json", path)], [("--input", p) for p in inputs]), paths)
    sims = np.zeros(args.matrix, dtype=np.float32)
    matrix_path = os.path.join(folder, "sims.npy")
    matrix = per_call(lambda path: save_score_file(sims, path), [matrix_path])
    print(f"{args.files} JSON files of {args.bytes} bytes in {folder} (page cache; one process):")
    print(f"  atomic write_json            {1e6 * write:8.1f} us per file")
    print(f"  output_target (the rule)     {1e6 * target:8.1f} us   {100 * target / write:5.2f}% of the write")
    print(f"  check_outputs, output exists {1e6 * check:8.1f} us   {100 * check / write:5.2f}% of the write "
          f"(4 stats: the output, {len(inputs)} inputs)")
    print(f"  save_score_file {args.matrix[0]}x{args.matrix[1]} float32 {1e3 * matrix:8.1f} ms   "
          f"rule + check {100 * (target + check) / matrix:7.4f}% of it")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()

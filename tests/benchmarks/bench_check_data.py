"""check_data.py's throughput against a plain sequential read (`cat FILE > /dev/null`), and its peak memory.

    python tests/benchmarks/bench_check_data.py                 # a 1.5 GB synthetic split in the temp folder
    python tests/benchmarks/bench_check_data.py --gigabytes 4 --folder /data/tmp

Writes `{folder}/bench_precomp/train_{ims.npy,caps.txt}` (float32 (n, 36, 2048), written in
chunks), then times, on the same file and in this order: cat and the check (check_data.py's
check_folders, timed inside its process so that importing torch is left out) with the file's
pages dropped from the page cache first (dd iflag=nocache, a posix_fadvise DONTNEED: "cold"),
then both again right after a full read ("warm"). The check runs as a child process so that its peak resident
memory (ru_maxrss from wait4) is its own, shown next to that of a process that only imports
it. The folder is removed at the end.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REGIONS, FEATURES = 36, 2048


def write_split(folder, n_images, chunk=512):
    """A float32 (n_images, 36, 2048) train split and its 5 captions per image, written chunk by chunk."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "train_ims.npy")
    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_images, REGIONS, FEATURES))
    rng = np.random.default_rng(0)
    for start in range(0, n_images, chunk):
        stop = min(start + chunk, n_images)
        features[start:stop] = rng.standard_normal((stop - start, REGIONS, FEATURES), dtype=np.float32)
    features.flush()
    del features
    with open(os.path.join(folder, "train_caps.txt"), "w", encoding="utf-8") as f:
        for image in range(n_images):
            f.writelines(f"a photo number {image} seen the {k}th way\n" for k in range(5))
    return path


def drop_from_cache(path):
    """Ask the kernel to forget the cached pages of `path` (that file only): GNU dd's nocache
    flag with count=0 advises DONTNEED for the whole file."""
    subprocess.run(["dd", f"if={path}", "iflag=nocache", "count=0", "status=none"], check=True)


def timed_child(command):
    """Run `command`; -> (seconds, peak resident MiB of that process, its stdout)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{command[0]} failed with exit status {os.waitstatus_to_exitcode(status)}")
    return seconds, usage.ru_maxrss / 1024, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigabytes", type=float, default=1.5, help="size of the synthetic features file")
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "bench_check_data"), help="where to write it (removed after)")
    parser.add_argument("--write_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n_images = int(args.gigabytes * 1e9 // (REGIONS * FEATURES * 4))
    split_folder = os.path.join(args.folder, "bench_precomp")
    if args.write_only:
        write_split(split_folder, n_images)
        return 0
    # Written by a child: a forked child starts with its parent's resident memory as its peak,
    # so this process stays small for the measurements below.
    timed_child([sys.executable, os.path.abspath(__file__), "--gigabytes", str(args.gigabytes),
                 "--folder", args.folder, "--write_only"])
    path = os.path.join(split_folder, "train_ims.npy")
    size = os.path.getsize(path)
    cat = ["sh", "-c", f"cat '{path}' > /dev/null"]
    # check_data.py's work without its start-up (importing torch takes seconds on a busy machine):
    # the child times check_folders itself and prints the seconds.
    check = [sys.executable, "-c", ("import sys, time; from lib.data.check import check_folders; "
             "start = time.perf_counter(); reports = check_folders(sys.argv[1], progress=False); "
             "assert not any(r.errors for r in reports); print(time.perf_counter() - start)"), args.folder]
    print(f"{path}: {n_images} images, {size / 1e9:.2f} GB; check_data.py also reads the "
          f"{os.path.getsize(os.path.join(os.path.dirname(path), 'train_caps.txt')) / 1e6:.1f} MB caption file")
    try:
        _, import_mib, _ = timed_child([sys.executable, "-c", "import lib.data.check"])
        print(f"peak RSS of a python process that only imports lib.data.check (numpy, torch, tqdm): "
              f"{import_mib:.0f} MiB")
        for cache in ("cold", "warm"):
            results = {}
            for name, command in (("cat", cat), ("check_data.py", check)):
                if cache == "cold":
                    drop_from_cache(path)
                results[name] = timed_child(command)
            cat_s = results["cat"][0]
            _, check_mib, out = results["check_data.py"]
            check_s = float(out)
            print(f"{cache} page cache: cat {size / cat_s / 1e6:5.0f} MB/s ({cat_s:5.2f} s) | check "
                  f"{size / check_s / 1e6:5.0f} MB/s ({check_s:5.2f} s; peak RSS {check_mib:.0f} MiB) | "
                  f"throughput ratio check/cat {cat_s / check_s:.2f}")
    finally:
        shutil.rmtree(args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())

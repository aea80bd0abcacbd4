"""Training-step speed by torch CPU thread count, on quiet cores and next to a busy process.

The demo's model (tiny random BERT, d = 64, 64-d region features, batch 64) trains for
a fixed time in a fresh process per setting; `--busy N` other processes spin a core
each meanwhile, as another job on a shared machine would. Prints steps per second for
every (competing processes, threads) pair, all measured in this run, so the thread
policy of lib/runtime/device.py can be checked on the machine at hand.

    python tests/benchmarks/bench_threads.py                     # threads 1 and all cores, 0 and 1 busy
    python tests/benchmarks/bench_threads.py --threads 1 2 auto --busy 0 1 --seconds 20
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SPIN = "while True: pass"


def steps_per_second(threads, seconds, warmup=3):
    """Train the demo-sized model for `seconds` on `threads` ('auto' or an int) -> steps/s."""
    import torch
    from bench_train_step import random_batch, step_trainer

    from lib.data.synthetic import demo_vocabulary, write_tiny_bert
    from lib.model.bert import bert_config_dict
    from lib.model.config import ModelConfig
    from lib.model.xdim_model import XDimModel
    from lib.runtime.device import apply_threads

    apply_threads(0 if threads == "auto" else int(threads))
    folder = write_tiny_bert(tempfile.mkdtemp(prefix="bench-threads-"), demo_vocabulary(), with_weights=False)
    config = bert_config_dict(folder)
    torch.manual_seed(0)
    model = XDimModel(ModelConfig(img_dim=64, embed_size=64, bert=folder, bert_config=config)).train()
    trainer = step_trainer(model, 64)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(64, config["vocab_size"], 64, gen, first_id=5) for _ in range(8)]
    for batch in batches[:warmup]:
        trainer.train_step(*batch)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        trainer.train_step(*batches[steps % len(batches)])
        steps += 1
    return steps / (time.perf_counter() - start), torch.get_num_threads()


def measure(threads, seconds):
    """Run one setting in a fresh interpreter (no OMP_NUM_THREADS) -> (steps/s, threads used)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, __file__, "--worker", str(threads), "--seconds", str(seconds)],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", nargs="+", default=["1", str(os.cpu_count())],
                        help="thread counts to compare ('auto': lib/runtime/device.py's policy)")
    parser.add_argument("--busy", nargs="+", type=int, default=[0, 1],
                        help="numbers of competing CPU-bound processes")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed training per setting")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        rate, used = steps_per_second(args.worker, args.seconds)
        print(rate, used)
        return
    print(f"{os.cpu_count()} CPU cores, load average at start {os.getloadavg()[0]:.2f}")
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
        try:
            for threads in args.threads:
                rate, used = measure(threads, args.seconds)
                print(f"competing processes {busy}  threads {threads:>4} ({used}): {rate:6.2f} steps/s",
                      flush=True)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()


if __name__ == "__main__":
    main()

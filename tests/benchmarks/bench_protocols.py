"""--protocols' ranked lists on a COCO-5K-shaped score matrix: time and extra memory, against
the usual COCO 5K metrics (lib.evaluation.metrics.evaluate_sims) on the same matrix.

    python tests/benchmarks/bench_protocols.py            # 5000 x 25000, one thread

The matrix (float32, 500 MB) is uniform noise rounded to 0.001 (ties occur) with each
image's true captions raised by 0.6 for two images in three. The lists are as deep as
--protocols coco,cxc,eccv makes them (max(10, R) per query). Peak memory above the matrix
is measured with tracemalloc (numpy reports its allocations to it) in a second, untimed run.
"""
import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lib.evaluation import metrics, protocols  # noqa: E402


def constructed_scores(n_images):
    rng = np.random.default_rng(0)
    sims = rng.random((n_images, 5 * n_images), dtype=np.float32)
    np.round(sims, 3, out=sims)
    captions = np.arange(5 * n_images)
    raised = captions[(captions // 5) % 3 != 0]
    sims[raised // 5, raised] += 0.6
    return sims


def measured(call):
    """-> (seconds of a plain run, peak bytes allocated during a second run under tracemalloc,
    which slows Python allocations and so is left out of the timing)."""
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    package = protocols.load_package()
    image_ids, caption_ids = protocols.package_image_order(package), np.asarray(package.coco_ids)
    truths = protocols.ground_truths(package, ("coco", "cxc", "eccv")).values()
    i2t_lengths = protocols.list_lengths([t["i2t"] for t in truths], image_ids)
    t2i_lengths = protocols.list_lengths([t["t2i"] for t in truths], caption_ids)
    sims = constructed_scores(len(image_ids))
    print(f"matrix {sims.shape[0]} x {sims.shape[1]} float32, {sims.nbytes / 2**20:.0f} MiB; "
          f"list depths: images up to {i2t_lengths.max()}, captions up to {t2i_lengths.max()}")
    rank_s, rank_peak = measured(lambda: protocols.ranked_lists(sims, i2t_lengths, t2i_lengths))
    ours_s, ours_peak = measured(lambda: metrics.evaluate_sims(sims, 5))
    print(f"ranked lists (5000 + 25000 queries): {rank_s:6.2f} s, peak extra memory {rank_peak / 2**20:6.1f} MiB")
    print(f"COCO 5K metrics (evaluate_sims):    {ours_s:6.2f} s, peak extra memory {ours_peak / 2**20:6.1f} MiB")
    print(f"ratio ranked lists / COCO 5K metrics: time {rank_s / ours_s:.2f}, memory {rank_peak / ours_peak:.2f}")


if __name__ == "__main__":
    main()

"""The ablation runner: every similarity variant trained on the same data with the same seed.

`run_ablation(model_config, train_config, runtime, variants, split, out_dir)` trains
one model per `--sim` variant with lib.training.trainer.train, configs identical but
for the similarity and the output folders (`out_dir/NAME/checkpoint`,
`out_dir/NAME/log`), then evaluates each `model_best.pth` on `split` and returns
one row per variant. `ablation_table` prints the rows; ablate.py writes them as JSON too.

Same data and seed means: the shuffle, the region dropping and the word perturbation
are functions of (seed, epoch, item), and the encoders are initialised from the seed
before the similarity, so every variant sees the same batches and starts from the same
encoder weights.
"""
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from lib.data.synthetic import DEMO_DATA_NAME, write_demo_dataset
from lib.evaluation.compare import COMPARED_KEYS, comparison_dict, paired_bootstrap, per_image_scores
from lib.evaluation.score_files import infer_captions_per_image, load_score_file, save_score_file
from lib.evaluation.scoring import evaluate_split, open_model_split
from lib.model.similarity import SIMILARITIES, ablation_variants
from lib.model.xdim_model import XDimModel
from lib.training.trainer import BEST, train

DEFAULT_VARIANTS = tuple(ablation_variants())  # the registry entries with in_ablation


@dataclass(frozen=True)
class AblationConfig:
    """What ablate.py adds to the training configs: the variants, where they are evaluated and
    written, how many seeds, and the bootstrap of their differences. Each field is also an
    option of ablate.py (help in its metadata)."""

    variants: tuple[str, ...] = field(default=DEFAULT_VARIANTS, metadata={
        "help": "similarities to train (listed below)", "nargs": "+", "choices": SIMILARITIES,
        "metavar": "NAME"})
    split: str = field(default="test", metadata={"help": "split every variant is evaluated on"})
    out: str = field(default=os.path.join("runs", "ablation"), metadata={
        "help": "folder for each variant's checkpoint/ and log/, and the table as ablation.json"})
    seeds: int = field(default=1, metadata={
        "help": "train every variant with seeds --seed, --seed + 1, ..., --seed + N - 1 "
                "(into OUT/seed_S/NAME when N > 1); the table shows mean ± std over them", "metavar": "N"})
    n_resamples: int = field(default=10000, metadata={
        "help": "bootstrap resamples of the interval of each variant's difference to the first (needs scipy)"})


def ensure_demo_data(data_path, data_name, img_dim):
    """Write the synthetic demo (data/make_demo.py's output) when asked for a missing one."""
    split_file = os.path.join(data_path, data_name, "testall_caps.txt")
    if data_name == DEMO_DATA_NAME and not os.path.exists(split_file):
        print(f"writing the synthetic demo data to {data_path} ...", flush=True)
        write_demo_dataset(data_path, img_dim=img_dim)


def variant_configs(model_config, train_config, name, out_dir):
    """The configs training variant `name` into out_dir/name/{checkpoint,log}."""
    return (replace(model_config, sim=name),
            replace(train_config, model_name=os.path.join(out_dir, name, "checkpoint"),
                    logger_name=os.path.join(out_dir, name, "log")))


def evaluate_checkpoint(path, data_path, data_name, split, batch_size, device, progress=True, sims_path=None):
    """Metrics dict (lib.evaluation.metrics keys, 'rsum' included) of checkpoint `path` on one split;
    with `sims_path`, the score matrix is saved there too (for the paired intervals)."""
    model = XDimModel.from_checkpoint(path, device=device)
    split_files, encoder, _ = open_model_split(model, data_path, data_name, split)
    sims, metrics = evaluate_split(model, split_files, encoder, batch_size=batch_size, progress=progress)
    if sims_path:
        save_score_file(sims, sims_path)
    return metrics


def run_ablation(model_config, train_config, runtime, variants, split, out_dir, progress=True):
    """Train and evaluate every variant; -> list of rows, one per variant, in order:
    {'sim', 'i2t_r1', 't2i_r1', 'rsum', 'metrics' (all of the split's), 'best_dev_rsum',
    'train_seconds', 'checkpoint', 'sims' (the split's score matrix, .npy)}."""
    rows = []
    for number, name in enumerate(variants, start=1):
        print(f"[{number}/{len(variants)}] --sim {name}", flush=True)
        variant_model, variant_training = variant_configs(model_config, train_config, name, out_dir)
        start = time.time()
        result = train(variant_model, variant_training, runtime)
        seconds = time.time() - start
        best = os.path.join(variant_training.model_name, BEST)
        sims_path = os.path.join(out_dir, name, f"{split}_sims.npy")
        metrics = evaluate_checkpoint(best, train_config.data_path, train_config.data_name, split,
                                      train_config.batch_size, runtime.torch_device(), progress, sims_path)
        rows.append({"sim": name, "i2t_r1": metrics["i2t_r1"], "t2i_r1": metrics["t2i_r1"],
                     "rsum": metrics["rsum"], "metrics": metrics, "best_dev_rsum": result["best_rsum"],
                     "train_seconds": round(seconds, 1), "checkpoint": best, "sims": sims_path})
    return rows


def ablation_table(rows, title):
    """`title`, then one line per variant: i2t R@1, t2i R@1 and rSum, best dev rSum, training time."""
    width = max([len(row["sim"]) for row in rows] + [len("variant")])
    head = f"{'variant':{width}} | {'i2t R@1':>7} | {'t2i R@1':>7} | {'rSum':>6} | {'dev rSum':>8} | {'train min':>9}"
    lines = [title, head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row['sim']:{width}} | {row['i2t_r1']:7.1f} | {row['t2i_r1']:7.1f} | {row['rsum']:6.1f} |"
                     f" {row['best_dev_rsum']:8.1f} | {row['train_seconds'] / 60:9.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- several seeds

SUMMARY_COLUMNS = ["i2t_r1", "t2i_r1", "rsum", "best_dev_rsum", "train_seconds"]


def run_seeds(model_config, train_config, runtime, variants, split, out_dir, n_seeds, progress=True):
    """run_ablation with seeds train_config.seed, + 1, ... (n_seeds of them); -> every run's row,
    seed by seed, each with its 'seed'. With several seeds, seed S trains into out_dir/seed_S/."""
    rows = []
    for offset in range(n_seeds):
        seeded = replace(train_config, seed=train_config.seed + offset)
        seed_dir = out_dir if n_seeds == 1 else os.path.join(out_dir, f"seed_{seeded.seed}")
        if n_seeds > 1:
            print(f"seed {seeded.seed} ({offset + 1} of {n_seeds})", flush=True)
        rows += [dict(row, seed=seeded.seed)
                 for row in run_ablation(model_config, seeded, runtime, variants, split, seed_dir, progress)]
    return rows


def runs_of(rows, name):
    """The rows of variant `name`, in seed order."""
    return [row for row in rows if row["sim"] == name]


def summarize_seeds(rows, variants):
    """{variant: {column: {'mean', 'std'}}} over its seeds for SUMMARY_COLUMNS; std with ddof 1
    (0 for one seed)."""
    summary = {}
    for name in variants:
        values = np.array([[row[column] for column in SUMMARY_COLUMNS] for row in runs_of(rows, name)],
                          dtype=np.float64)
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(len(SUMMARY_COLUMNS))
        summary[name] = {column: {"mean": float(values[:, k].mean()), "std": float(std[k])}
                         for k, column in enumerate(SUMMARY_COLUMNS)}
    return summary


def seed_mean_scores(runs):
    """Per-image scores (compare.per_image_scores, (n_img, 7)) of the runs' score matrices,
    averaged over the runs (seeds); each matrix is read in turn."""
    total = None
    for row in runs:
        sims = load_score_file(row["sims"])
        scores = per_image_scores(sims, infer_captions_per_image(sims, row["sims"]))
        total = scores if total is None else total + scores
    return total / len(runs)


def variant_intervals(rows, variants, n_resamples=10000, confidence=0.95, seed=0):
    """Each variant but the first against the first: {variant: compare.comparison_dict}.

    The statistic is the difference of the seed-averaged recalls; each resample draws the
    images once and applies the draw to every seed's matrix of both variants, so the
    interval reflects the split's images while the seeds are averaged (their spread is
    the table's std).
    """
    baseline = seed_mean_scores(runs_of(rows, variants[0]))
    return {name: comparison_dict(paired_bootstrap(baseline, seed_mean_scores(runs_of(rows, name)),
                                                   n_resamples, confidence, seed))
            for name in variants[1:]}


def seeds_table(summary, title):
    """`title`, then per variant the mean ± std over seeds of ablation_table's columns."""
    heads = ["i2t R@1", "t2i R@1", "rSum", "dev rSum", "train min"]
    scales = [1, 1, 1, 1, 1 / 60]
    width = max([len(name) for name in summary] + [len("variant")])
    lines = [title, f"{'variant':{width}} | " + " | ".join(f"{head:^15}" for head in heads)]
    lines.append("-" * len(lines[-1]))
    for name, columns in summary.items():
        cells = [f"{columns[key]['mean'] * scale:.1f} ± {columns[key]['std'] * scale:.1f}"
                 for key, scale in zip(SUMMARY_COLUMNS, scales)]
        lines.append(f"{name:{width}} | " + " | ".join(f"{cell:>15}" for cell in cells))
    return "\n".join(line.rstrip() for line in lines)


def intervals_table(intervals, baseline, confidence=0.95):
    """Per variant: the difference to `baseline` and its interval for R@1 both ways and rSum."""
    keys = [key for key in COMPARED_KEYS if key in ("i2t_r1", "t2i_r1", "rsum")]
    width = max([len(name) for name in intervals] + [len("variant")])
    head = f"{'variant':{width}} | " + " | ".join(f"{'d ' + key:^26}" for key in keys)
    lines = [f"difference to {baseline}, {100 * confidence:g}% paired bootstrap interval over the images",
             head, "-" * len(head)]
    for name, comparison in intervals.items():
        cells = [f"{comparison[key]['diff']:+6.1f} [{comparison[key]['ci_low']:+6.1f}, "
                 f"{comparison[key]['ci_high']:+6.1f}]" for key in keys]
        lines.append(f"{name:{width}} | " + " | ".join(f"{cell:^26}" for cell in cells))
    return "\n".join(line.rstrip() for line in lines)

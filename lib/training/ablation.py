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
from dataclasses import replace

from lib.data.synthetic import DEMO_DATA_NAME, write_demo_dataset
from lib.evaluation.scoring import evaluate_split, open_model_split
from lib.model.similarity import ablation_variants
from lib.model.xdim_model import XDimModel
from lib.training.trainer import BEST, train

DEFAULT_VARIANTS = ablation_variants()  # the registry entries with in_ablation


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


def evaluate_checkpoint(path, data_path, data_name, split, batch_size, device, progress=True):
    """Metrics dict (lib.evaluation.metrics keys, 'rsum' included) of checkpoint `path` on one split."""
    model = XDimModel.from_checkpoint(path, device=device)
    split_files, encoder, _ = open_model_split(model, data_path, data_name, split)
    return evaluate_split(model, split_files, encoder, batch_size=batch_size, progress=progress)[1]


def run_ablation(model_config, train_config, runtime, variants, split, out_dir, progress=True):
    """Train and evaluate every variant; -> list of rows, one per variant, in order:
    {'sim', 'i2t_r1', 't2i_r1', 'rsum', 'metrics' (all of the split's), 'best_dev_rsum',
    'train_seconds', 'checkpoint'}."""
    rows = []
    for number, name in enumerate(variants, start=1):
        print(f"[{number}/{len(variants)}] --sim {name}", flush=True)
        variant_model, variant_training = variant_configs(model_config, train_config, name, out_dir)
        start = time.time()
        result = train(variant_model, variant_training, runtime)
        seconds = time.time() - start
        best = os.path.join(variant_training.model_name, BEST)
        metrics = evaluate_checkpoint(best, train_config.data_path, train_config.data_name, split,
                                      train_config.batch_size, runtime.torch_device(), progress)
        rows.append({"sim": name, "i2t_r1": metrics["i2t_r1"], "t2i_r1": metrics["t2i_r1"],
                     "rsum": metrics["rsum"], "metrics": metrics, "best_dev_rsum": result["best_rsum"],
                     "train_seconds": round(seconds, 1), "checkpoint": best})
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

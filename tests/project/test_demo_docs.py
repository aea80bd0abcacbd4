"""docs/analysis.md, the README's table and docs/training.md quote the quick start's demo run as
recorded in docs/figures/ (its train.log, analyze.py's summary.json and eval.py's table), and that
run used the quick start's options. A page edited without the record, a record regenerated without
the page, a demo recipe changed without regenerating both, or a change to the training code that
moves the demo's numbers (its first logged loss, recomputed in 50 steps) fails here."""
import ast
import json
import os
import re

import pytest
import torch

from lib.cli.train import default_options, get_argument_parser, train_configs
from lib.data import precomp
from lib.data.synthetic import DEMO_IMG_DIM, DEMO_SPLITS, DEMO_TRAINING, write_demo_dataset
from lib.model.bert import bert_max_positions, load_tokenizer
from lib.training import trainer
from lib.training.tb_logger import TBLogger

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIGURES = os.path.join(ROOT, "docs", "figures")


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def page():
    return " ".join(_read("docs", "analysis.md").split())  # prose lines joined


@pytest.fixture(scope="module")
def summary():
    return json.loads(_read("docs", "figures", "demo_summary.json"))


@pytest.fixture(scope="module")
def log_lines():
    return _read("docs", "figures", "demo_train.log").splitlines()


def _logged_dict(log_lines, name):
    return ast.literal_eval(next(line for line in log_lines if line.startswith(f"{name}: "))[len(name) + 2:])


def test_the_recorded_run_is_the_quick_starts(log_lines):
    model, training = _logged_dict(log_lines, "model"), _logged_dict(log_lines, "training")
    defaults = vars(get_argument_parser().parse_args([]))
    expected = {**{k: defaults[k] for k in training}, **DEMO_TRAINING}
    assert {k: training[k] for k in training if k not in ("logger_name", "model_name")} == \
        {k: expected[k] for k in training if k not in ("logger_name", "model_name")}
    assert (model["img_dim"], model["embed_size"], model["sim"]) == \
        (DEMO_TRAINING["img_dim"], DEMO_TRAINING["embed_size"], defaults["sim"])
    assert model["bert"] == DEMO_TRAINING["bert_path"]
    assert "device cpu, amp none, 1 CPU threads" in log_lines  # the conditions the page states


def test_the_log_excerpt_is_from_the_recorded_log(log_lines):
    block = re.search(r"```\n(epoch .*?)```", _read("docs", "analysis.md"), re.S).group(1).splitlines()
    assert len(block) >= 4 and set(block) <= set(log_lines)


def test_the_mask_numbers_are_the_summarys(page, summary):
    mask, d = summary["mask"], summary["embed_size"]
    entries = round(mask["mask_density"] * d * d)
    holders = sum(1 for n in mask["dependencies_per_dimension"]["values"] if n)
    assert f"{entries} of the {d * d} entries are above 0.5 (`mask_density` {mask['mask_density']:.3g})" in page
    assert f"held by {holders} of the {d} dimensions ({d - holders} keep none)" in page
    assert f"(here {min(mask['theta']):.2f} to {max(mask['theta']):.2f}, mean {mask['mean_threshold']:.3f})" in page
    assert 2 <= min(mask["lam"]) and max(mask["lam"]) <= 3  # "with lambda between 2 and 3"


def test_the_mask_growth_in_the_prose_is_the_logs(page, log_lines, summary):
    d = summary["embed_size"]
    counts = []
    for line in log_lines:
        match = re.search(r" mask_density ([0-9.e-]+)", line)
        if match and round(float(match.group(1)) * d * d) not in counts:
            counts.append(round(float(match.group(1)) * d * d))
    assert counts[0] == 0 and len(counts) >= 3
    later = ", ".join(str(n) for n in counts[2:-1])
    assert f"(iteration {_first_iteration(log_lines, counts[1], d)}: {counts[1]} entr" in page
    assert f"then {later} and finally {counts[-1]} entries" in page


def _first_iteration(log_lines, entries, d):
    for line in log_lines:
        match = re.search(r" iter (\d+) .* mask_density ([0-9.e-]+)", line)
        if match and round(float(match.group(2)) * d * d) == entries:
            return int(match.group(1))
    raise AssertionError(entries)


def test_the_concept_sentences_are_the_summarys(page, summary):
    for word, concept in summary["concepts"].items():
        tops = [f"{t['dimension']} ({100 * t['probability']:.0f}%)" for t in concept["top_dimensions"]]
        assert (f'"{word}" ({concept["occurrences"]} occurrences in the demo\'s test split): dimensions '
                f'{", ".join(tops[:-1])} and {tops[-1]}') in page
    overlap = summary["concept_overlap"]
    words, shared = overlap["words"], overlap["shared"]
    pairs = [(a, b) for i, a in enumerate(words) for j, b in enumerate(words) if i < j and shared[i][j]]
    assert pairs == [("dog", "red")] and 'only "dog" and "red" share a top-3 dimension' in page


def test_the_pair_shares_are_the_summarys(page, summary):
    pair = summary["pair"]
    by_share = sorted(zip(pair["shares"], pair["tokens"]), reverse=True)[:3]
    quoted = ", ".join(f"{token} {100 * share:.1f}%" for share, token in by_share)
    assert f"content words carry the most ({quoted}," in page


def test_the_figures_on_the_page_are_the_recorded_runs(summary):
    shown = re.findall(r"\(figures/demo_(\w+\.png)\)", _read("docs", "analysis.md"))
    assert shown and set(shown) <= set(summary["figures"])
    assert all(os.path.isfile(os.path.join(FIGURES, "demo_" + name)) for name in shown)


def test_readme_and_training_page_quote_the_recorded_table():
    table = _read("docs", "figures", "demo_eval.txt").splitlines()
    assert "\n".join(table) in _read("README.md")
    rsum = table[-1].split("|")[3].strip()
    assert f"the demo ends at {rsum} (the quick start's" in " ".join(_read("docs", "training.md").split())


def test_the_training_code_still_gives_the_recorded_first_loss(tmp_path, log_lines):
    """The quick start's first 50 steps, rerun: a change to the data, the model or the step that
    moves the demo's numbers moves this loss too (then regenerate the record and the pages)."""
    logged = next(line for line in log_lines if line.startswith("epoch 0 [50/"))
    recorded = float(re.search(r" loss ([0-9.]+) ", logged).group(1))
    data_path, data_name, bert_path = write_demo_dataset(str(tmp_path), img_dim=DEMO_IMG_DIM,
                                                         sizes={"train": DEMO_SPLITS["train"]})
    opt = default_options(**dict(DEMO_TRAINING, data_path=data_path, bert_path=bert_path, threads=1,
                                 model_name=str(tmp_path / "ckpt"), logger_name=str(tmp_path / "log")))
    model_config, config, runtime = train_configs(opt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recorded run's threads: float sums in the same order
    try:
        encoder = precomp.CaptionTokenizer(load_tokenizer(bert_path), bert_max_positions(bert_path))
        loader = trainer.make_train_loader(config, encoder, model_config)
        model = trainer.build_model(model_config, bert_path, config.seed, "cpu", "none")
        steps = trainer.Trainer(model, config, loader, None, encoder, None, TBLogger(str(tmp_path), enabled=False))
        steps.start_epoch(0)
        for i, (images, image_lengths, captions, lengths, _, _) in zip(range(50), loader):
            loss = steps.train_step(images, captions, lengths, image_lengths)
    finally:
        torch.set_num_threads(threads)
    # 4 decimals in the log; 1e-4 relative leaves room for another CPU's float kernels
    assert loss == pytest.approx(recorded, rel=1e-4)


def test_the_ablation_tables_xdim_row_is_the_quick_starts(log_lines):
    """ablate.py trains its xdim variant with the quick start's options: docs/similarity.md's row
    must show the recorded test recalls and the recorded run's best dev rSum."""
    test_row = [cell.split() for cell in _read("docs", "figures", "demo_eval.txt").splitlines()[-1].split("|")]
    best_dev = float(re.search(r"^done: best rsum ([0-9.]+)$", "\n".join(log_lines), re.M).group(1))
    row = re.search(r"^xdim +\|(.*)$", _read("docs", "similarity.md"), re.M).group(1).split("|")
    assert [cell.strip() for cell in row[:4]] == [test_row[1][0], test_row[2][0], test_row[3][0], f"{best_dev:.1f}"]

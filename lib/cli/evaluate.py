"""eval.py's command (test.py and testall.py are it with other defaults): its options, their
checks, the EvalConfig built from them once, and the two runs.

`run_evaluation` scores a checkpoint and/or score files on a split and prints the protocol's
tables (plus the two-stage recalls of --shortlist and the benchmarks of --protocols);
`run_compare` prints B - A with paired bootstrap intervals for two score files or checkpoints.
Both take the typed configs, never the parsed namespace. The work itself lives in
lib.evaluation (encoding, scoring, metrics, protocols, compare) and, for --shortlist, in
lib.retrieval.index; this module puts it in order and prints.
"""
import argparse
import dataclasses
import os

from lib.cli.options import (
    AT_LEAST_1,
    COUNT,
    RUNTIME_RANGES,
    WORKERS,
    HelpFormatter,
    add_config_options,
    add_runtime_options,
    check_output_file,
    check_ranges,
    config_from_args,
)
from lib.errors import XDimError
from lib.evaluation import compare, metrics, protocols, score_files, scoring
from lib.evaluation.config import EvalConfig
from lib.formats.atomic import check_outputs, write_json
from lib.model.xdim_model import XDimModel
from lib.runtime import distributed
from lib.runtime.device import resolve_device

EVALUATION_RANGES = {
    "batch_size": AT_LEAST_1, "workers": WORKERS, "fold_images": AT_LEAST_1, "rows_per_block": COUNT,
    **RUNTIME_RANGES,
}


def evaluation_parser(description, **defaults):
    """eval.py's options, one per EvalConfig field plus the runtime ones; `defaults` (e.g. data_name,
    split, fold5) preset some of them (test.py, testall.py)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_options(parser, EvalConfig)
    add_runtime_options(parser)
    parser.set_defaults(**defaults)
    return parser


# ---------------------------------------------------------------- checks and the config

def check_evaluation_options(args):
    """Check eval.py's (test.py's, testall.py's) options before any work -> the torch.device.

    Something to evaluate must be given, numbers must lie in their range, the --json
    and --save_sims files must be writable and the device must exist here. Raises
    XDimError naming the first bad option.
    """
    if not args.model_path and not args.ensemble:
        raise XDimError("nothing to evaluate: give --model_path and/or --ensemble FILE...")
    if args.shortlist is not None and (args.shortlist < 1 or not args.model_path):
        raise XDimError(f"--shortlist {args.shortlist}: needs K >= 1 and --model_path "
                        f"(the global vectors come from the model)")
    check_ranges(args, EVALUATION_RANGES)
    for option, path in (("--json", args.json), ("--save_sims", args.save_sims)):
        if path:
            check_output_file(option, path)
    return resolve_device(args.device)


def check_compare_options(args):
    """eval.py --compare's checks, before any scoring (XDimError naming the first bad option)."""
    if args.protocols or args.pm_dir:
        raise XDimError("--compare reports this codebase's metrics only: leave out --protocols and --pm_dir")
    if args.model_path or args.ensemble or args.shortlist or args.save_sims:
        raise XDimError("--compare A B takes the two sides itself: leave out --model_path, --ensemble, "
                        "--shortlist and --save_sims")
    compare.check_resamples("--n_resamples", args.n_resamples)
    for path in args.compare:
        if not os.path.isfile(path):
            raise XDimError(f"{path}: no such file (--compare takes two .npy score files or checkpoints)")
    if args.json:
        check_output_file("--json", args.json)


def evaluation_config(args):
    """The EvalConfig of parsed options (already checked); --protocols is parsed into its names here
    (XDimError for an unknown one or a missing --pm_dir file)."""
    names = ()
    if args.protocols or args.pm_dir:
        names = protocols.parse_protocols(args.protocols or "", args.pm_dir, args.fold_images)
    return config_from_args(EvalConfig, args, protocols=names, bert_path=args.bert_path)


def check_outputs_spare_inputs(config, split=None):
    """XDimError, before any scoring, when --json or --save_sims would replace a file the command
    reads (the checkpoint, a score file, the split's features or captions, the BERT or --pm_dir folder)."""
    inputs = [("--model_path", config.model_path), ("--bert_path", config.bert_path), ("--pm_dir", config.pm_dir)]
    inputs += [("--ensemble", path) for path in config.ensemble]
    inputs += [("--compare", path) for path in config.compare or ()]
    if split is not None:
        inputs += [("--split", scoring.image_source(split)), ("--split", split.captions_path)]
    save_sims = score_files.score_file_path(config.save_sims) if config.save_sims else None
    check_outputs([("--json", config.json), ("--save_sims", save_sims)], inputs)


# ---------------------------------------------------------------- eval.py

def run_evaluation(config, runtime):
    """Evaluate and print the tables (rank 0 only under torchrun)."""
    runtime.apply_threads()
    results, label = evaluate(config, runtime)
    if results is not None:  # None: another process of a torchrun launch reports
        print_results(results, label)


def evaluate(config, runtime):
    """Scores from the model and/or files -> (results of metrics.run_protocol, table label),
    --save_sims and --json written.

    Everything that can be checked without scoring is checked first: the score files,
    the split, the shapes to ensemble and the fold count. Under torchrun every process
    takes part in scoring and rank 0 alone reports; the others return (None, label).
    """
    device = distributed.init_from_env(runtime.torch_device())
    with distributed.together():
        score_files.warn_repeated_files(config.ensemble)
        matrices = [score_files.load_score_file(path) for path in config.ensemble]
        sources, shapes = list(config.ensemble), [m.shape for m in matrices]
        split = None
        if config.model_path:
            model = XDimModel.from_checkpoint(config.model_path, config.bert_path, device, runtime.amp)
            split, encoder, label = open_split(config, model)
            sources, shapes = [config.model_path] + sources, [(split.n_images, split.n_captions)] + shapes
            cpi = split.captions_per_image
        else:
            label = "ensemble"
            cpi = score_files.infer_captions_per_image(matrices[0], config.ensemble[0])
        check_outputs_spare_inputs(config, split)
        score_files.check_same_shape(shapes, sources)
        if config.fold5:
            metrics.check_fold_count(shapes[0][0], 5, config.fold_images)
        prepared = config.protocols and protocols.prepare(config.protocols, config.pm_dir, shapes[0],
                                                          split_ids_file(config, split))
    global_vectors = None
    if config.model_path:
        sims, global_vectors = model_scores(config, model, split, encoder)
        matrices.insert(0, sims)
    with distributed.together():
        if not distributed.is_main():
            return None, label
        return report(config, matrices, sources, cpi, global_vectors, prepared), label


def open_split(config, model):
    """-> (the split of --data_path/--data_name/--split as `model` reads it, its encoder, table label)."""
    return scoring.open_model_split(model, config.data_path, config.data_name, config.split, config.image_root)


def model_scores(config, model, split, encoder):
    """Encode and score the split -> (sims (n_img, n_cap) float32, the global
    vectors of lib.retrieval.index.evaluation_vectors with --shortlist, else None).

    Under torchrun every process encodes and scores its share (scoring.split_scores) and
    rank 0 gets the result; the others get (None, None or vectors of None).
    """
    sims, img_emb, captions = scoring.split_scores(model, split, encoder, config.batch_size, config.workers,
                                                   config.storage, config.rows_per_block, config.progress)
    if not config.shortlist:
        return sims, None
    from lib.retrieval.index import evaluation_vectors
    with distributed.together():
        img_global, cap_global, description = evaluation_vectors(model, config.model_path, img_emb, captions)
    return sims, (scoring.gather_image_rows(img_global, split.n_images, config.batch_size), cap_global, description)


def split_ids_file(config, split):
    """The image-id file of the evaluated split (`split`: the model's, None for score files alone):
    a raw-image split's own (S_ids.txt beside its captions), else the one beside the region features
    or under --data_path/--data_name."""
    if split is not None and hasattr(split, "ids_path"):
        return split.ids_path
    return protocols.ids_file(None if split is None else split.images_path, config.data_path, config.data_name,
                              config.split)


def report(config, matrices, sources, cpi, global_vectors, prepared=None):
    """The protocol's results of the (ensembled) scores, the model's checked finite, with
    --protocols the benchmarks (`prepared`: protocols.prepare's); writes --save_sims and --json."""
    if config.model_path:
        score_files.check_finite_scores(matrices[0], config.model_path)
        score_files.warn_constant_scores(matrices[0], config.model_path)
    sims = matrices[0] if len(matrices) == 1 else score_files.ensemble_sims(matrices, sources)
    results = metrics.run_protocol(sims, cpi, config.fold5, config.fold_images)
    if config.save_sims:
        score_files.save_score_file(sims, config.save_sims)
    results.update({"n_images": sims.shape[0], "n_captions": sims.shape[1], "captions_per_image": cpi,
                    "model_path": config.model_path, "ensemble": list(config.ensemble)})
    if config.shortlist:
        from lib.retrieval.index import two_stage_protocol
        img_global, cap_global, description = global_vectors
        results["shortlist"] = two_stage_protocol(sims, img_global, cap_global, config.shortlist, cpi,
                                                  config.fold5, config.fold_images)
        results["shortlist"]["vectors"] = description
    if config.protocols:
        results["protocols"] = protocols.evaluate(sims, results, config.protocols, prepared, config.progress)
    if config.json:
        write_json(config.json, metrics.rounded(results))
    return results


def print_results(results, label):
    """The protocol's table, then the two-stage and benchmark tables when they were asked for."""
    print(metrics.results_table(results, label))
    if "shortlist" in results:
        two_stage = results["shortlist"]
        print(f"\ntwo stages: X-Dim on the {two_stage['k']} best by {two_stage['vectors']['kind']} "
              f"global vectors per query, {100 * two_stage['pair_fraction']:.2f}% of the pair scores")
        print(metrics.results_table(two_stage, f"{label} shortlist {two_stage['k']}"))
    if "protocols" in results:
        print(f"\nbenchmarks on COCO 5K{protocols.checked_note(results['protocols'])}:")
        print(protocols.protocols_table(results["protocols"]))


# ---------------------------------------------------------------- eval.py --compare

def run_compare(config, runtime):
    """eval.py --compare A B: print B - A with intervals for each protocol (and write --json)."""
    check_outputs_spare_inputs(config)
    compare.check_scipy()
    device = runtime.torch_device()
    runtime.apply_threads()
    side_a, side_b = config.compare
    sides = sorted(config.compare, key=lambda path: not path.endswith(".npy"))  # score files first: cheap
    scored = {path: compare_side(config, path, device, runtime.amp) for path in sides}
    (sims_a, cpi), (sims_b, _) = scored[side_a], scored[side_b]
    if config.fold5:
        metrics.check_fold_count(sims_a.shape[0], 5, config.fold_images)
    results = compare.compare_sims(sims_a, sims_b, cpi, config.fold5, config.fold_images, config.n_resamples,
                                   seed=config.seed)
    if config.json:
        summary = {"a": side_a, "b": side_b, "unit": "image", "n_resamples": config.n_resamples,
                   "seed": config.seed, "confidence": 0.95, **results}
        write_json(config.json, {"compare": metrics.rounded(summary)})
    for name, comparison in results.items():
        print(f"\n{name} ({'COCO 1K: 5-fold mean' if name == 'fold_mean' else 'the whole matrix'}):")
        print(compare.comparison_table(comparison, side_a, side_b))


def compare_side(config, path, device, amp):
    """One side of --compare -> (sims (n_img, n_cap) float32, captions per image): a score
    file (.npy) as it is, a checkpoint scored on the split of --data_path/--data_name/--split."""
    if path.endswith(".npy"):
        sims = score_files.load_score_file(path)
        return sims, score_files.infer_captions_per_image(sims, path)
    model = XDimModel.from_checkpoint(path, config.bert_path, device, amp)
    split, encoder, _ = open_split(config, model)
    sims, _ = model_scores(dataclasses.replace(config, model_path=path), model, split, encoder)
    return sims, split.captions_per_image

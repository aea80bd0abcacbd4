"""Evaluate an X-Dim checkpoint, saved score matrices, or both (an ensemble) on a precomp split.

    python eval.py --model_path runs/f30k/model_best.pth --data_path DATA --data_name f30k_precomp --split test
    python eval.py --model_path runs/coco/model_best.pth --data_path DATA --data_name coco_precomp \
        --split testall --fold5 --save_sims coco_a.npy --json coco_a.json
    python eval.py --ensemble coco_a.npy coco_b.npy --fold5       # no model needed
    python eval.py --compare coco_a.npy coco_b.npy --fold5        # B - A with 95% bootstrap intervals
    python testall.py --ensemble coco_a.npy --data_path DATA --protocols coco,cxc,eccv  # needs eccv_caption

test.py (Flickr30K 1K test) and testall.py (COCO 5-fold 1K and 5K) are this
script with other defaults.
"""
import argparse
import os
import sys

from lib.cli.entry import entry_point
from lib.cli.options import HelpFormatter, add_runtime_options, check_evaluation_options, check_output_file
from lib.errors import XDimError
from lib.evaluation import compare, encoding, metrics, protocols, score_files, scoring
from lib.formats.atomic import check_outputs, write_json
from lib.model.xdim_model import XDimModel
from lib.runtime import distributed
from lib.runtime.device import apply_threads


def build_parser(description=None, **defaults):
    """The evaluation options; `defaults` (e.g. data_name, split, fold5) preset some of them."""
    parser = argparse.ArgumentParser(description=description or __doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--model_path", default=None,
        help="checkpoint to evaluate (ours or the official release's); may be left out when "
             "--ensemble gives score files")
    add("--data_path", default=None,
        help="folder holding {data_name}/, or for a raw-image checkpoint the dataset folder "
             "(precomp/, id_mapping.json, images) (None: the checkpoint's data_path)")
    add("--data_name", default=None, help="f30k_precomp or coco_precomp (None: the checkpoint's)")
    add("--image_root", default=None,
        help="a raw-image checkpoint's image folder, when not inside --data_path (None: the one it was "
             "trained with, else images/ for COCO, flickr30k-images/ otherwise)")
    add("--split", default="test", help="split to evaluate: test, testall, dev, ...")
    add("--fold5", action=argparse.BooleanOptionalAction, default=False,
        help="also report the 5-fold 1K protocol (COCO testall): each fold and their mean")
    add("--fold_images", type=int, default=1000, help="images per fold for --fold5")
    add("--batch_size", type=int, default=128, help="images / captions per encoder batch")
    add("--workers", type=int, default=2, help="data loader worker processes")
    add("--storage", default="float32", choices=list(encoding.STORAGE_DTYPES),
        help="dtype of the stored image and caption embeddings (float16/bfloat16 halve the memory)")
    add("--rows_per_block", type=int, default=0,
        help="scoring block size in (image, caption token) rows; 0 picks 2048 on CPU, 32768 on CUDA")
    add("--save_sims", metavar="FILE", default=None,
        help="write the evaluated score matrix (the ensemble, with --ensemble) as a float32 "
             ".npy (n_images, n_captions)")
    add("--ensemble", metavar="FILE", nargs="+", default=[],
        help="score matrices to average with the model's (or alone, without --model_path): "
             "--save_sims files or the official code's saved {'npts', 'sims'} files")
    add("--json", metavar="FILE", default=None, help="write every metric to this JSON file")
    add("--shortlist", type=int, metavar="K", default=None,
        help="also report two-stage recalls: each query keeps the K best items by global vectors "
             "(the checkpoint's .shortlist.pth head, else mean pooling; needs faiss-cpu) and X-Dim "
             "ranks those (see docs/retrieval.md)")
    add("--compare", metavar=("A", "B"), nargs=2, default=None,
        help="compare two score files of one split (.npy as above) or two checkpoints (scored on "
             "--data_path/--data_name/--split): each metric, B - A and its paired bootstrap interval "
             "over the images (needs scipy); replaces --model_path and --ensemble")
    add("--n_resamples", type=int, default=10000, help="bootstrap resamples for --compare")
    add("--seed", type=int, default=0, help="seed of the --compare bootstrap")
    add("--protocols", metavar="LIST", default=None,
        help="COCO 5K (testall) only: also report these benchmarks, comma-separated: coco (1K, 5K), "
             "cxc, eccv (ECCV Caption R@K, R-Precision, mAP@R), pmrp (with --pm_dir); all but coco "
             "need eccv_caption and the split's image ids (S_ids.txt); see docs/evaluation.md")
    add("--pm_dir", metavar="DIR", default=None,
        help="folder holding pm_image_to_caption.json and pm_caption_to_image.json, for --protocols pmrp")
    add("--no_progress", action="store_true", help="hide the progress bars")
    add_runtime_options(parser)
    parser.set_defaults(**defaults)
    return parser


def model_scores(args, model, split, encoder):
    """Encode and score the split -> (sims (n_img, n_cap) float32, the global
    vectors of lib.retrieval.index.evaluation_vectors with --shortlist, else None).

    Under torchrun every process encodes and scores its share (scoring.encode_shares) and
    rank 0 gets the result; the others get (None, None).
    """
    progress = not args.no_progress and distributed.is_main()
    img_emb, captions = scoring.encode_shares(model, split, encoder, args.batch_size, args.workers,
                                              args.storage, progress)
    with distributed.together():
        sims = scoring.model_sims(model, img_emb, captions, args.rows_per_block, progress)
        global_vectors = None
        if args.shortlist:
            from lib.retrieval.index import evaluation_vectors
            global_vectors = evaluation_vectors(model, args.model_path, img_emb, captions)
    sims = scoring.gather_image_rows(sims, split.n_images, args.batch_size)
    if global_vectors:
        img_global, cap_global, description = global_vectors
        global_vectors = (scoring.gather_image_rows(img_global, split.n_images, args.batch_size),
                          cap_global, description)
    return sims, global_vectors


def check_outputs_spare_inputs(args, split=None, compared=()):
    """XDimError, before any scoring, when --json or --save_sims would replace a file the command
    reads (the checkpoint, a score file, the split's features or captions, the BERT or --pm_dir folder)."""
    inputs = [("--model_path", args.model_path), ("--bert_path", args.bert_path), ("--pm_dir", args.pm_dir)]
    inputs += [("--ensemble", path) for path in args.ensemble] + [("--compare", path) for path in compared]
    if split is not None:
        inputs += [("--split", scoring.image_source(split)), ("--split", split.captions_path)]
    save_sims = score_files.score_file_path(args.save_sims) if args.save_sims else None
    check_outputs([("--json", args.json), ("--save_sims", save_sims)], inputs)


def evaluate(args, device):
    """Scores from the model and/or files -> (results of metrics.run_protocol, table label),
    --save_sims and --json written.

    Everything that can be checked without scoring is checked first: the score files,
    the split, the shapes to ensemble and the fold count. Under torchrun every process
    takes part in scoring and rank 0 alone reports; the others return (None, label).
    """
    device = distributed.init_from_env(device)
    with distributed.together():
        score_files.warn_repeated_files(args.ensemble)
        matrices = [score_files.load_score_file(path) for path in args.ensemble]
        sources, shapes = list(args.ensemble), [m.shape for m in matrices]
        if args.model_path:
            model = XDimModel.from_checkpoint(args.model_path, args.bert_path, device, args.amp)
            split, encoder, label = scoring.open_model_split(model, args.data_path, args.data_name, args.split,
                                                             args.image_root)
            sources, shapes = [args.model_path] + sources, [(split.n_images, split.n_captions)] + shapes
            cpi = split.captions_per_image
        else:
            split, label = None, "ensemble"
            cpi = score_files.infer_captions_per_image(matrices[0], args.ensemble[0])
        check_outputs_spare_inputs(args, split)
        score_files.check_same_shape(shapes, sources)
        if args.fold5:
            metrics.check_fold_count(shapes[0][0], 5, args.fold_images)
        prepared = args.protocols and protocols.prepare(args.protocols, args.pm_dir, shapes[0],
                                                        split_ids_file(args, split if args.model_path else None))
    global_vectors = None
    if args.model_path:
        sims, global_vectors = model_scores(args, model, split, encoder)
        matrices.insert(0, sims)
    with distributed.together():
        if not distributed.is_main():
            return None, label
        return report(args, matrices, sources, cpi, global_vectors, prepared), label


def split_ids_file(args, split):
    """The image-id file of the evaluated split: a raw-image split's own (S_ids.txt beside its
    captions), else the one beside the region features or under --data_path/--data_name."""
    if split is not None and hasattr(split, "ids_path"):
        return split.ids_path
    return protocols.ids_file(None if split is None else split.images_path, args.data_path, args.data_name,
                              args.split)


def report(args, matrices, sources, cpi, global_vectors, prepared=None):
    """The protocol's results of the (ensembled) scores, the model's checked finite, with
    --protocols the benchmarks (`prepared`: protocols.prepare's); writes --save_sims and --json."""
    if args.model_path:
        score_files.check_finite_scores(matrices[0], args.model_path)
        score_files.warn_constant_scores(matrices[0], args.model_path)
    sims = matrices[0] if len(matrices) == 1 else score_files.ensemble_sims(matrices, sources)
    results = metrics.run_protocol(sims, cpi, args.fold5, args.fold_images)
    if args.save_sims:
        score_files.save_score_file(sims, args.save_sims)
    results.update({"n_images": sims.shape[0], "n_captions": sims.shape[1], "captions_per_image": cpi,
                    "model_path": args.model_path, "ensemble": list(args.ensemble)})
    if args.shortlist:
        from lib.retrieval.index import two_stage_protocol
        img_global, cap_global, description = global_vectors
        results["shortlist"] = two_stage_protocol(sims, img_global, cap_global, args.shortlist, cpi,
                                                  args.fold5, args.fold_images)
        results["shortlist"]["vectors"] = description
    if args.protocols:
        results["protocols"] = protocols.evaluate(sims, results, args.protocols, prepared, not args.no_progress)
    if args.json:
        write_json(args.json, metrics.rounded(results))
    return results


def compare_side(args, path, device):
    """One side of --compare -> (sims (n_img, n_cap) float32, captions per image): a score
    file (.npy) as it is, a checkpoint scored on the split of --data_path/--data_name/--split."""
    if path.endswith(".npy"):
        sims = score_files.load_score_file(path)
        return sims, score_files.infer_captions_per_image(sims, path)
    model = XDimModel.from_checkpoint(path, args.bert_path, device, args.amp)
    split, encoder, _ = scoring.open_model_split(model, args.data_path, args.data_name, args.split,
                                                             args.image_root)
    sims, _ = model_scores(argparse.Namespace(**dict(vars(args), model_path=path)), model, split, encoder)
    return sims, split.captions_per_image


def check_compare_options(args):
    """eval.py --compare's checks, before any scoring (XDimError naming the first bad option)."""
    if args.model_path or args.ensemble or args.shortlist or args.save_sims:
        raise XDimError("--compare A B takes the two sides itself: leave out --model_path, --ensemble, "
                        "--shortlist and --save_sims")
    compare.check_resamples("--n_resamples", args.n_resamples)
    for path in args.compare:
        if not os.path.isfile(path):
            raise XDimError(f"{path}: no such file (--compare takes two .npy score files or checkpoints)")
    if args.json:
        check_output_file("--json", args.json)
    check_outputs_spare_inputs(args, compared=args.compare)
    compare.check_scipy()


def run_compare(args):
    """eval.py --compare A B: print B - A with intervals for each protocol."""
    from lib.runtime.device import resolve_device
    check_compare_options(args)
    device = resolve_device(args.device)
    apply_threads(args.threads)
    sides = sorted(args.compare, key=lambda path: not path.endswith(".npy"))  # score files first: cheap
    scored = {path: compare_side(args, path, device) for path in sides}
    (sims_a, cpi), (sims_b, _) = scored[args.compare[0]], scored[args.compare[1]]
    if args.fold5:
        metrics.check_fold_count(sims_a.shape[0], 5, args.fold_images)
    results = compare.compare_sims(sims_a, sims_b, cpi, args.fold5, args.fold_images, args.n_resamples,
                                   seed=args.seed)
    report = {"a": args.compare[0], "b": args.compare[1], "unit": "image", "n_resamples": args.n_resamples,
              "seed": args.seed, "confidence": 0.95, **results}
    if args.json:
        write_json(args.json, {"compare": metrics.rounded(report)})
    for name, comparison in results.items():
        print(f"\n{name} ({'COCO 1K: 5-fold mean' if name == 'fold_mean' else 'the whole matrix'}):")
        print(compare.comparison_table(comparison, *args.compare))


@entry_point
def main(argv=None, description=None, **defaults):
    args = build_parser(description, **defaults).parse_args(argv)
    if args.compare and (args.protocols or args.pm_dir):
        raise XDimError("--compare reports this codebase's metrics only: leave out --protocols and --pm_dir")
    if args.compare:
        return run_compare(args)
    device = check_evaluation_options(args)
    if args.protocols or args.pm_dir:
        args.protocols = protocols.parse_protocols(args.protocols or "", args.pm_dir, args.fold_images)
    apply_threads(args.threads)
    results, label = evaluate(args, device)
    if results is None:  # another process of a torchrun launch reports
        return 0
    print(metrics.results_table(results, label))
    if "shortlist" in results:
        two_stage = results["shortlist"]
        print(f"\ntwo stages: X-Dim on the {two_stage['k']} best by {two_stage['vectors']['kind']} "
              f"global vectors per query, {100 * two_stage['pair_fraction']:.2f}% of the pair scores")
        print(metrics.results_table(two_stage, f"{label} shortlist {two_stage['k']}"))
    if "protocols" in results:
        print(f"\nbenchmarks on COCO 5K{protocols.checked_note(results['protocols'])}:")
        print(protocols.protocols_table(results["protocols"]))


if __name__ == "__main__":
    sys.exit(main())

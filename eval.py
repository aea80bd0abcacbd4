"""Evaluate an X-Dim checkpoint, saved score matrices, or both (an ensemble) on a precomp split.

    python eval.py --model_path runs/f30k/model_best.pth --data_path DATA --data_name f30k_precomp --split test
    python eval.py --model_path runs/coco/model_best.pth --data_path DATA --data_name coco_precomp \
        --split testall --fold5 --save_sims coco_a.npy --json coco_a.json
    python eval.py --ensemble coco_a.npy coco_b.npy --fold5       # no model needed

test.py (Flickr30K 1K test) and testall.py (COCO 5-fold 1K and 5K) are this
script with other defaults.
"""
import argparse
import json
import sys

from lib import metrics, score_files, scoring
from lib.errors import XDimError
from lib.options import add_runtime_options


def build_parser(description=None, **defaults):
    """The evaluation options; `defaults` (e.g. data_name, split, fold5) preset some of them."""
    parser = argparse.ArgumentParser(description=description or __doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--model_path", default=None,
        help="checkpoint to evaluate (ours or the official release's); may be left out when "
             "--ensemble gives score files")
    add("--data_path", default=None,
        help="folder holding {data_name}/ (None: the checkpoint's data_path)")
    add("--data_name", default=None, help="f30k_precomp or coco_precomp (None: the checkpoint's)")
    add("--split", default="test", help="split to evaluate: test, testall, dev, ...")
    add("--fold5", action="store_true",
        help="also report the 5-fold 1K protocol (COCO testall): each fold and their mean")
    add("--fold_images", type=int, default=1000, help="images per fold for --fold5")
    add("--batch_size", type=int, default=128, help="images / captions per encoder batch")
    add("--workers", type=int, default=2, help="data loader worker processes")
    add("--storage", default="float32", choices=list(scoring.STORAGE_DTYPES),
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
    add("--no_progress", action="store_true", help="hide the progress bars")
    add_runtime_options(parser)
    parser.set_defaults(**defaults)
    return parser


def model_scores(args):
    """Load the checkpoint, encode and score the split -> (sims (n_img, n_cap), captions per image)."""
    from lib.bert import load_tokenizer
    from lib.datasets.precomp import CaptionEncoder, open_split
    from lib.vse import VSEModel
    model = VSEModel.from_checkpoint(args.model_path, bert_path=args.bert_path, device=args.device)
    model.opt.amp = args.amp
    data_path = args.data_path or model.opt.data_path
    data_name = args.data_name or model.opt.data_name
    split = open_split(data_path, data_name, args.split, img_dim=model.opt.img_dim)
    encoder = CaptionEncoder(load_tokenizer(model.opt.bert_path), model.bert_config["max_position_embeddings"])
    img_emb, captions = scoring.encode_split(model, split, encoder, args.batch_size, args.workers,
                                                args.storage, not args.no_progress)
    sims = scoring.model_sims(model, img_emb, captions, args.rows_per_block, not args.no_progress)
    return sims, split.captions_per_image, f"{data_name} {args.split}"


def evaluate(args):
    """Scores from the model and/or files -> (results of metrics.run_protocol, table label)."""
    if not args.model_path and not args.ensemble:
        raise XDimError("nothing to evaluate: give --model_path and/or --ensemble FILE...")
    matrices, cpi, label = [], None, "ensemble"
    if args.model_path:
        sims, cpi, label = model_scores(args)
        matrices.append(sims)
    matrices += [score_files.load_score_file(path) for path in args.ensemble]
    sims = matrices[0] if len(matrices) == 1 else score_files.ensemble_sims(matrices)
    if cpi is None:
        cpi = score_files.infer_captions_per_image(sims, args.ensemble[0])
    if args.save_sims:
        score_files.save_score_file(sims, args.save_sims)
    results = metrics.run_protocol(sims, cpi, args.fold5, args.fold_images)
    results.update({"n_images": sims.shape[0], "n_captions": sims.shape[1], "captions_per_image": cpi,
                    "model_path": args.model_path, "ensemble": list(args.ensemble)})
    return results, label


def main(argv=None, description=None, **defaults):
    args = build_parser(description, **defaults).parse_args(argv)
    try:
        results, label = evaluate(args)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2)
    except (XDimError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(metrics.results_table(results, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())

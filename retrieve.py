"""Retrieval with an X-Dim checkpoint on your own gallery: a FAISS shortlist, then X-Dim on it.

    # once per checkpoint (optional, recommended): global vectors that imitate X-Dim
    python retrieve.py distill --model_path runs/demo/checkpoint/model_best.pth
    # once per gallery: an image gallery (text queries) or a caption gallery (image queries)
    python retrieve.py build --model_path CKPT --images data/mine/gallery_ims.npy --index idx/gallery
    python retrieve.py build --model_path CKPT --captions data/mine/gallery_caps.txt --index idx/caps
    # a folder of photos, with a raw-image (backbone-mode) checkpoint; --update later adds what changed
    python retrieve.py build --model_path CKPT --image_folder ~/Pictures --index idx/photos
    # queries
    python retrieve.py query --index idx/gallery --query "a man riding a horse" --top_k 10
    python retrieve.py query --index idx/gallery --queries questions.txt --json hits.json
    python retrieve.py query --index idx/caps --image_index 7       # an image of the split beside the captions
    python retrieve.py query --index idx/caps --images other_ims.npy --image_id 391895
    python retrieve.py query --index idx/photos --queries questions.txt --html results.html
    python retrieve.py query --index idx/photos --query "a dog on a beach" --explain figures/
    python retrieve.py query --index idx/caps --query_image holiday.jpg   # a photo: its best captions

Bad input prints one `error: ...` line and exits 2; an existing index is never damaged, and
--overwrite replaces only a folder that is an index. Outputs are written atomically.
"""
import argparse
import os
import sys
import time

from lib.cli.entry import entry_point
from lib.cli.options import (
    AT_LEAST_1,
    POSITIVE,
    add_runtime_options,
    check_output_file,
    check_output_folder,
    check_ranges,
    runtime_config,
)
from lib.errors import XDimError
from lib.formats.atomic import check_outputs, write_json

# A temperature of 0 divides by zero (an all-NaN head), a negative one inverts the ranking learned.
DISTILL_RANGES = {"epochs": AT_LEAST_1, "batch_images": AT_LEAST_1, "learning_rate": POSITIVE, "size": AT_LEAST_1,
                  "group": AT_LEAST_1, "temperature": POSITIVE}


def _add_model_options(parser, required=True):
    parser.add_argument("--model_path", required=required, default=None,
                        help="X-Dim checkpoint" + ("" if required else " (default: the one the index was built with)"))
    parser.add_argument("--head", default=None, metavar="FILE",
                        help="shortlist head (default: the .shortlist.pth file beside the checkpoint if "
                             "there is one, else parameter-free mean pooling)")
    add_runtime_options(parser)


def build_parser():
    from lib.retrieval import index as retrieval
    from lib.retrieval import shortlist
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    commands = parser.add_subparsers(dest="command", required=True)

    distill = commands.add_parser("distill", help="train a shortlist head that imitates X-Dim's ranking")
    distill.add_argument("--model_path", required=True, help="X-Dim checkpoint (frozen, not modified)")
    distill.add_argument("--data_path", default=None,
                         help="folder holding {data_name}/ (default: the checkpoint's)")
    distill.add_argument("--data_name", default=None, help="dataset folder name (default: the checkpoint's)")
    distill.add_argument("--split", default="train", help="split to distill on (default %(default)s)")
    distill.add_argument("--epochs", type=int, default=30,
                         help="passes over the split's images (default %(default)s)")
    distill.add_argument("--batch_images", type=int, default=100,
                         help="images per step, with all their captions: X-Dim scores this block "
                              "(default %(default)s)")
    distill.add_argument("--learning_rate", type=float, default=2e-3,
                         help="Adam learning rate, cosine decay (default %(default)s)")
    distill.add_argument("--temperature", type=float, default=0.05,
                         help="temperature of the softmax over X-Dim's scores (default %(default)s)")
    distill.add_argument("--size", type=int, default=shortlist.DEFAULT_SIZE,
                         help="global vector size, plus 2 offset coordinates (default %(default)s)")
    distill.add_argument("--group", type=int, default=4,
                         help="after the first epoch, batches are made of groups of this many images the "
                              "head finds alike (1: random batches; default %(default)s)")
    distill.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    distill.add_argument("--out", default=None, metavar="FILE",
                         help="head file (default: beside the checkpoint, *.shortlist.pth)")
    add_runtime_options(distill)

    build = commands.add_parser("build", help="encode a gallery into an index folder")
    _add_model_options(build)
    gallery = build.add_mutually_exclusive_group(required=True)
    gallery.add_argument("--images", metavar="FILE", help="{split}_ims.npy: an image gallery, for text queries")
    gallery.add_argument("--captions", metavar="FILE",
                         help="a text file, one caption per line: a caption gallery, for image queries")
    gallery.add_argument("--image_folder", metavar="DIR",
                         help="a folder of photos (JPEG, PNG, WebP, searched recursively; never written): an "
                              "image gallery of a raw-image checkpoint, items are paths relative to DIR")
    build.add_argument("--index", required=True, metavar="DIR", help="index folder to create")
    build.add_argument("--index_type", default="auto", choices=retrieval.INDEX_TYPES,
                       help=f"stage-one index: exact inner product (flat), HNSW, or auto (flat below "
                            f"{retrieval.APPROXIMATE_FROM:,} items; default %(default)s)")
    build.add_argument("--batch_size", type=int, default=None,
                       help="items per encoder batch (default 128, and 32 photos for --image_folder)")
    build.add_argument("--update", action="store_true",
                       help="with --image_folder: refresh an existing index, encoding only the new or changed "
                            "files and dropping removed ones; the old index answers queries until the swap")
    build.add_argument("--workers", type=int, default=0,
                       help="processes decoding photos for --image_folder (default %(default)s: in this one)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index (only a folder whose manifest says it is one)")
    build.add_argument("--no_progress", action="store_true", help="hide the progress bars")

    query = commands.add_parser("query", help="search an index")
    query.add_argument("--index", required=True, metavar="DIR", help="index folder (retrieve.py build)")
    asked = query.add_mutually_exclusive_group(required=True)
    asked.add_argument("--query", help="text to search images for")
    asked.add_argument("--queries", metavar="FILE", help="text file, one query per line")
    asked.add_argument("--image_index", type=int, metavar="N", help="row N of --images: search captions for it")
    asked.add_argument("--image_id", metavar="ID",
                       help="the image with this id in the {split}_ids.txt beside --images")
    asked.add_argument("--query_image", metavar="FILE",
                       help="a photo (JPEG, PNG, WebP): search a caption gallery for it (raw-image checkpoint)")
    query.add_argument("--images", metavar="FILE", default=None,
                       help="{split}_ims.npy holding the query image (default: the one beside the "
                            "caption file the index was built from)")
    query.add_argument("--top_k", type=int, default=retrieval.DEFAULT_TOP_K,
                       help="results per query (default %(default)s)")
    query.add_argument("--shortlist", type=int, default=retrieval.DEFAULT_SHORTLIST,
                       help="stage-one candidates that X-Dim scores per query (default %(default)s)")
    query.add_argument("--json", metavar="FILE", default=None, help="also write the results to this JSON file")
    query.add_argument("--html", metavar="FILE", default=None,
                       help="also write a page of the results with thumbnails, one self-contained file")
    query.add_argument("--explain", metavar="DIR", default=None,
                       help="also draw, for each text query and each of its hits, what each word attended to "
                            "(figures in DIR, see docs/analysis.md)")
    query.add_argument("--image_folder", metavar="DIR", default=None,
                       help="where the indexed photos are now, for --html and --explain (default: the folder "
                            "the index was built from)")
    _add_model_options(query, required=False)
    return parser


def _load_model(args, model_path, device=None, photos=False):
    """The checkpoint at `model_path` with the threads and precision asked for, on `device`
    (None: the one --device names). A raw-image checkpoint only where no region features are read
    (`photos`: a photo folder, captions, text or photo queries)."""
    from lib.model.xdim_model import XDimModel
    runtime = runtime_config(args)
    runtime.apply_threads()
    model = XDimModel.from_checkpoint(model_path, args.bert_path, device or runtime.torch_device(), runtime.amp)
    if model.config.uses_backbone and not photos:
        raise XDimError(f"{model_path}: a raw-image (backbone) checkpoint; retrieve.py takes region-feature "
                        "checkpoints only for distill, --images, --image_index and --image_id (a raw-image "
                        "checkpoint builds from --image_folder or --captions and queries with --query, --queries "
                        "or --query_image)")
    return model


def _load(args, model_path, device=None, photos=False):
    """-> (model on `device`, its weights fingerprint, global-vector encoder)."""
    from lib.formats.checkpoint import weights_fingerprint
    from lib.retrieval import shortlist
    model = _load_model(args, model_path, device, photos)
    fingerprint = weights_fingerprint(model.state_dict())
    return model, fingerprint, shortlist.global_encoder(model, fingerprint, model_path, getattr(args, "head", None))


def run_distill(args):
    from lib.evaluation.scoring import open_model_split
    from lib.formats.checkpoint import weights_fingerprint
    from lib.retrieval import shortlist
    check_ranges(args, DISTILL_RANGES)
    out = args.out or shortlist.default_head_path(args.model_path)
    check_output_file("--out", out)
    check_outputs([("--out", out)], [("--model_path", args.model_path), ("--bert_path", args.bert_path)])
    model = _load_model(args, args.model_path)
    split, encoder, _ = open_model_split(model, args.data_path, args.data_name, args.split)
    check_outputs([("--out", out)], [("--split", split.images_path), ("--split", split.captions_path)])
    start = time.time()
    head, loss = shortlist.distill_head(model, split, encoder, args.epochs, args.batch_images, args.learning_rate,
                                        args.temperature, args.size, group=args.group, seed=args.seed)
    details = {"split": split.images_path, "epochs": args.epochs, "batch_images": args.batch_images,
               "learning_rate": args.learning_rate, "temperature": args.temperature, "group": args.group,
               "final_loss": loss}
    shortlist.save_head(head, out, weights_fingerprint(model.state_dict()), details)
    print(f"distilled a {args.size}-d shortlist head on {split.n_images} images in {time.time() - start:.0f} s "
          f"(last epoch's loss {loss:.4f}) -> {out}")


def run_build(args):
    """Build an index; under torchrun every process encodes a share and rank 0 reports."""
    from lib.retrieval import index as retrieval
    from lib.runtime import distributed
    if args.batch_size is not None:  # None: the default of the gallery's kind
        check_ranges(args, {"batch_size": AT_LEAST_1})
    check_output_folder("--index", os.path.dirname(os.path.abspath(args.index)), shown=args.index)
    if args.image_folder is not None:
        return build_folder(args)
    if args.update:
        raise XDimError("--update refreshes an index of an --image_folder; rebuild other indexes with --overwrite")
    retrieval.check_index_target(args.index, args.overwrite,
                                 [(f"--{name}", getattr(args, name))
                                  for name in ("images", "captions", "model_path", "head", "bert_path")])
    device = distributed.init_from_env(runtime_config(args).torch_device())
    with distributed.together():
        model, _, encoder = _load(args, args.model_path, device, photos=args.captions is not None)
    start = time.time()
    manifest = retrieval.build_index(model, encoder, args.index, images=args.images, captions=args.captions,
                                     model_path=args.model_path, batch_size=args.batch_size or 128,
                                     index_type=args.index_type, overwrite=args.overwrite,
                                     progress=not args.no_progress)
    if manifest is None:
        return
    print(f"indexed {manifest['count']} {manifest['gallery']} in {time.time() - start:.1f} s: "
          f"{manifest['index_type']} FAISS index of {manifest['global']['kind']} vectors "
          f"({manifest['global']['size']}-d) -> {args.index}")


def build_folder(args):
    """build --image_folder: check the folder and the target, load the model, index (or update)."""
    from lib.retrieval import folder
    folder.check_folder_build(args.index, args.image_folder, args.overwrite, args.update, args.model_path)
    model, _, encoder = _load(args, args.model_path, photos=True)
    start = time.time()
    built = folder.build_folder_index(model, encoder, args.index, args.image_folder, args.model_path,
                                      args.batch_size or 32, args.index_type, args.overwrite, args.update,
                                      args.workers, progress=not args.no_progress)
    if built is None:
        print(f"{args.index}: up to date with {args.image_folder} (no file added, changed or removed)")
        return
    manifest = built.manifest
    changes = (f"{built.encoded} encoded, {built.kept} kept, {built.dropped} removed; " if args.update else "")
    print(f"indexed {manifest['count']} photos of {args.image_folder} in {time.time() - start:.1f} s "
          f"({changes}{built.unreadable} unreadable, skipped): {manifest['index_type']} FAISS index of "
          f"{manifest['global']['kind']} vectors ({manifest['global']['size']}-d) -> {args.index}")


def _query_image(args, manifest, img_dim):
    """-> (label, features (R, img_dim), real regions) of the image asked for."""
    from lib.retrieval import index as retrieval
    path = args.images or manifest["source"].get("query_images")
    if not path:
        raise XDimError("give --images FILE: the index's caption file has no {split}_ims.npy beside it")
    images, ids, counts = retrieval.load_gallery_images(path, img_dim)
    if args.image_id is not None:
        if args.image_id not in ids:
            raise XDimError(f"--image_id {args.image_id}: unknown id (not in the ids of {path})")
        row = ids.index(args.image_id)
    else:
        row = args.image_index
        if not 0 <= row < len(images):
            raise XDimError(f"--image_index {row}: out of range, {path} holds images 0..{len(images) - 1}")
    return f"image {ids[row]} (row {row} of {path})", images[row], int(counts[row])


def read_queries(path):
    """The lines of a --queries file; XDimError for a folder, a missing file or one without text."""
    from lib.data.precomp import read_captions
    if os.path.isdir(path):
        raise XDimError(f"--queries {path}: is a folder, give a text file with one query per line")
    if not os.path.isfile(path):
        raise XDimError(f"--queries {path}: no such file")
    with open(path, "rb") as f:
        if not f.read().strip():
            raise XDimError(f"--queries {path}: is empty, give one query per line")
    return read_captions(path)


def warn_unknown_query(encoder, text):
    """Say on stderr when no word of a text query is in the checkpoint's vocabulary (each becomes [UNK],
    so the ranking answers nothing that was asked)."""
    pieces = encoder.tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
    if pieces and all(piece == encoder.tokenizer.unk_token_id for piece in pieces):
        print(f"warning: query {text.strip()!r}: none of its words is in the checkpoint's vocabulary, all read as "
              f"[UNK]; the results below do not depend on what was asked", file=sys.stderr)


def _check_query_outputs(args):
    """--json, --html and --explain: writable, checked before any work."""
    for option in ("json", "html"):
        if getattr(args, option):
            check_output_file(f"--{option}", getattr(args, option))
    if args.explain:
        check_output_folder("--explain", args.explain)


def _photo_folder(args, manifest):
    """Where the indexed photos are (--image_folder, else the folder the index was built from), or None."""
    return args.image_folder or manifest["source"].get("image_folder")


def run_query(args):
    from lib.retrieval import index as retrieval
    check_ranges(args, {"top_k": AT_LEAST_1, "shortlist": AT_LEAST_1})
    queries = read_queries(args.queries) if args.queries is not None else [args.query]
    _check_query_outputs(args)
    manifest = retrieval.read_manifest(args.index)
    text_query = args.query is not None or args.queries is not None
    retrieval.expect_gallery(manifest, args.index, "images" if text_query else "captions")
    if args.explain and not text_query:
        raise XDimError("--explain draws what the words of a text query looked at; give --query or --queries")
    if args.query_image is not None:
        from lib.retrieval.folder import check_photo_file
        check_photo_file(args.query_image)
    model_path = args.model_path or manifest["model"].get("path")
    if not model_path:
        raise XDimError(f"{args.index}: the manifest names no checkpoint; give --model_path")
    check_outputs([("--json", args.json), ("--html", args.html)],
                  [("--index", args.index), ("--queries", args.queries), ("--images", args.images),
                   ("--query_image", args.query_image), ("--image_folder", args.image_folder),
                   ("--model_path", model_path), ("--head", args.head), ("--bert_path", args.bert_path)])
    model, _, encoder = _load(args, model_path, photos=text_query or args.query_image is not None)
    gallery = retrieval.GalleryIndex.open(args.index, model, encoder)
    shortlist_size = max(args.shortlist, args.top_k)
    if shortlist_size > args.shortlist:
        print(f"note: --shortlist {args.shortlist} is below --top_k {args.top_k}; X-Dim scores the "
              f"{shortlist_size} best of stage one instead", file=sys.stderr)
    results = []
    if text_query:
        for text in queries:
            warn_unknown_query(gallery.caption_tokenizer(), text)
            start = time.time()
            hits = gallery.search_text(text, args.top_k, shortlist_size)
            results.append((text, hits, time.time() - start))
    elif args.query_image is not None:
        from lib.retrieval.folder import encode_photo
        img_emb, count = encode_photo(model, model_path, args.query_image)
        start = time.time()
        hits = gallery.search_encoded_image(img_emb, count, args.top_k, shortlist_size)
        results.append((f"photo {args.query_image}", hits, time.time() - start))
    else:
        label, regions, count = _query_image(args, manifest, model.config.img_dim)
        start = time.time()
        results.append((label, gallery.search_image(regions, count, args.top_k, shortlist_size), time.time() - start))
    for label, hits, seconds in results:
        print(f"{label}: top {len(hits)} of {len(gallery)} {gallery.gallery} "
              f"(X-Dim on {min(shortlist_size, len(gallery))} shortlisted, {1000 * seconds:.0f} ms)")
        for hit in hits:
            print(f"  {hit.rank:3d}. {hit.score:8.4f}  #{hit.index}  {hit.item}")
    if args.json:
        write_json(args.json, [{"query": label, "seconds": seconds, "hits": retrieval.hits_as_dicts(hits)}
                               for label, hits, seconds in results])
    if args.html:
        _write_page(args, gallery, results)
    if args.explain:
        from lib.analysis.attention import explain_hits
        for text, hits, _ in results:
            for path in explain_hits(gallery, text, hits, _photo_folder(args, manifest), args.explain):
                print(f"wrote {path}")


def _write_page(args, gallery, results):
    """--html: the results with thumbnails of the photos (a folder gallery) and of the query photo."""
    from lib.retrieval import html
    folder = _photo_folder(args, gallery.manifest) if gallery.gallery == "images" else None
    html.write_hits_page(args.html, results, folder, args.query_image, f"X-Dim search of {args.index}",
                         len(gallery))
    print(f"wrote {args.html}")


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    {"distill": run_distill, "build": run_build, "query": run_query}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

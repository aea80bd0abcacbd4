"""retrieve.py's three commands: their options, their checks, and the runs.

`retrieval_parser(doc)` declares the subcommands distill, build and query, each with one
option per field of its config (lib.retrieval.config, through add_config_options) and the
runtime options. `retrieval_configs(args)` turns the parsed options into (the command's
config, RuntimeConfig) once; `check_retrieval_options(config, runtime)` checks all that can be
checked before a model loads, the first bad option stopping the run with one line naming
it; `run_retrieval_command` hands the configs to `run_distill`, `run_build` or `run_query`.
Nothing below reads the parsed namespace.
"""
import argparse
import os
import sys
import time

from lib.cli.options import (
    AT_LEAST_1,
    POSITIVE,
    RUNTIME_RANGES,
    WORKERS,
    HelpFormatter,
    add_config_options,
    add_runtime_options,
    check_output_file,
    check_output_folder,
    check_ranges,
    config_from_args,
    runtime_config,
)
from lib.errors import XDimError
from lib.evaluation.scoring import open_model_split
from lib.formats.atomic import check_outputs, write_json
from lib.formats.checkpoint import weights_fingerprint
from lib.model.xdim_model import XDimModel
from lib.retrieval import folder, html, shortlist
from lib.retrieval import index as retrieval
from lib.retrieval.config import BuildConfig, DistillConfig, QueryConfig
from lib.retrieval.queries import read_queries, split_image, warn_unknown_query
from lib.runtime import distributed

COMMANDS = {"distill": (DistillConfig, "train a shortlist head that imitates X-Dim's ranking"),
            "build": (BuildConfig, "encode a gallery into an index folder"),
            "query": (QueryConfig, "search an index")}
# A temperature of 0 divides by zero (an all-NaN head), a negative one inverts the ranking learned.
DISTILL_RANGES = {"epochs": AT_LEAST_1, "batch_images": AT_LEAST_1, "learning_rate": POSITIVE, "size": AT_LEAST_1,
                  "group": AT_LEAST_1, "temperature": POSITIVE}
BUILD_RANGES = {"workers": WORKERS}  # and --batch_size when given
QUERY_RANGES = {"top_k": AT_LEAST_1, "shortlist": AT_LEAST_1}
# The inputs of a build that its index must not overwrite or contain.
BUILD_INPUTS = ("images", "captions", "model_path", "head", "bert_path")


def retrieval_parser(doc):
    """retrieve.py's parser; `doc`, the script's docstring, gives its first line as the description
    and the rest (the examples) as the epilog."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc.split("\n", 2)[2])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (config_class, summary) in COMMANDS.items():
        command = commands.add_parser(name, help=summary, formatter_class=HelpFormatter)
        add_runtime_options(add_config_options(command, config_class))
    return parser


def retrieval_configs(args):
    """retrieve.py's parsed options -> (DistillConfig, BuildConfig or QueryConfig, RuntimeConfig)."""
    config_class = COMMANDS[args.command][0]
    return config_from_args(config_class, args, bert_path=args.bert_path), runtime_config(args)


# ---------------------------------------------------------------- checks

def check_retrieval_options(config, runtime):
    """Check a command's options before any model loads (XDimError naming the first bad one)."""
    check_ranges(runtime, RUNTIME_RANGES)
    {DistillConfig: check_distill, BuildConfig: check_build, QueryConfig: check_query}[type(config)](config)


def check_distill(config):
    """Numbers in range; the head file writable and none of the inputs."""
    check_ranges(config, DISTILL_RANGES)
    out = config.head_path()
    check_output_file("--out", out)
    check_outputs([("--out", out)], [("--model_path", config.model_path), ("--bert_path", config.bert_path)])


def check_build(config):
    """Numbers in range, the index's parent writable, and the target and gallery usable: a photo
    folder (lib.retrieval.folder.check_folder_build) or any other (check_index_target)."""
    if config.batch_size is not None:  # None: the default of the gallery's kind
        check_ranges(config, {"batch_size": AT_LEAST_1})
    check_ranges(config, BUILD_RANGES)
    check_output_folder("--index", os.path.dirname(os.path.abspath(config.index)), shown=config.index)
    if config.image_folder is not None:
        folder.check_folder_build(config.index, config.image_folder, config.overwrite, config.update,
                                  config.model_path)
    elif config.update:
        raise XDimError("--update refreshes an index of an --image_folder; rebuild other indexes with --overwrite")
    else:
        retrieval.check_index_target(config.index, config.overwrite,
                                     [(f"--{name}", getattr(config, name)) for name in BUILD_INPUTS])


def check_query(config):
    """Numbers in range, the --queries file readable (read here, so a bad line is reported before
    anything else), and --json, --html and --explain writable. What needs the index's manifest is
    checked by `check_against_index`."""
    check_ranges(config, QUERY_RANGES)
    if config.queries is not None:
        read_queries(config.queries)
    for option in ("json", "html"):
        if getattr(config, option):
            check_output_file(f"--{option}", getattr(config, option))
    if config.explain:
        check_output_folder("--explain", config.explain)


def check_against_index(config, manifest):
    """The query's checks that need the index's manifest -> the checkpoint to load: the gallery
    answers this kind of query, --explain has texts to explain, the photo asked for is a file, a
    checkpoint is known, and no output overwrites an input."""
    retrieval.expect_gallery(manifest, config.index, "images" if config.text_query else "captions")
    if config.explain and not config.text_query:
        raise XDimError("--explain draws what the words of a text query looked at; give --query or --queries")
    if config.query_image is not None:
        folder.check_photo_file(config.query_image)
    model_path = config.model_path or manifest["model"].get("path")
    if not model_path:
        raise XDimError(f"{config.index}: the manifest names no checkpoint; give --model_path")
    check_outputs([("--json", config.json), ("--html", config.html)],
                  [("--index", config.index), ("--queries", config.queries), ("--images", config.images),
                   ("--query_image", config.query_image), ("--image_folder", config.image_folder),
                   ("--model_path", model_path), ("--head", config.head), ("--bert_path", config.bert_path)])
    return model_path


# ---------------------------------------------------------------- runs

def run_retrieval_command(config, runtime):
    """Do the command that `config` describes."""
    {DistillConfig: run_distill, BuildConfig: run_build, QueryConfig: run_query}[type(config)](config, runtime)


def load_model(config, runtime, model_path, device=None):
    """The checkpoint at `model_path` with the threads and precision of `runtime`, on `device` (None:
    the runtime's). A raw-image checkpoint only where the command reads no region features."""
    runtime.apply_threads()
    model = XDimModel.from_checkpoint(model_path, config.bert_path, device or runtime.torch_device(), runtime.amp)
    if model.config.uses_backbone and config.reads_region_features:
        raise XDimError(f"{model_path}: a raw-image (backbone) checkpoint; retrieve.py takes region-feature "
                        "checkpoints only for distill, --images, --image_index and --image_id (a raw-image "
                        "checkpoint builds from --image_folder or --captions and queries with --query, --queries "
                        "or --query_image)")
    return model


def load_with_encoder(config, runtime, model_path, device=None):
    """-> (model, global-vector encoder: --head, else the head beside the checkpoint, else mean pooling)."""
    model = load_model(config, runtime, model_path, device)
    return model, shortlist.global_encoder(model, weights_fingerprint(model.state_dict()), model_path, config.head)


def run_distill(config, runtime):
    """Distill a shortlist head on the split and save it beside the checkpoint (or to --out)."""
    model = load_model(config, runtime, config.model_path)
    split, encoder, _ = open_model_split(model, config.data_path, config.data_name, config.split)
    out = config.head_path()
    check_outputs([("--out", out)], [("--split", split.images_path), ("--split", split.captions_path)])
    start = time.time()
    head, loss = shortlist.distill_head(model, split, encoder, config.epochs, config.batch_images,
                                        config.learning_rate, config.temperature, config.size, group=config.group,
                                        seed=config.seed)
    details = {"split": split.images_path, "epochs": config.epochs, "batch_images": config.batch_images,
               "learning_rate": config.learning_rate, "temperature": config.temperature, "group": config.group,
               "final_loss": loss}
    shortlist.save_head(head, out, weights_fingerprint(model.state_dict()), details)
    print(f"distilled a {config.size}-d shortlist head on {split.n_images} images in {time.time() - start:.0f} s "
          f"(last epoch's loss {loss:.4f}) -> {out}")


def run_build(config, runtime):
    """Build an index; under torchrun every process encodes a share and rank 0 reports."""
    if config.image_folder is not None:
        return build_folder(config, runtime)
    device = distributed.init_from_env(runtime.torch_device())
    with distributed.together():
        model, encoder = load_with_encoder(config, runtime, config.model_path, device)
    start = time.time()
    manifest = retrieval.build_index(model, encoder, config.index, images=config.images, captions=config.captions,
                                     model_path=config.model_path, batch_size=config.encoder_batch(),
                                     index_type=config.index_type, overwrite=config.overwrite,
                                     progress=not config.no_progress)
    if manifest is None:
        return
    print(f"indexed {manifest['count']} {manifest['gallery']} in {time.time() - start:.1f} s: "
          f"{manifest['index_type']} FAISS index of {manifest['global']['kind']} vectors "
          f"({manifest['global']['size']}-d) -> {config.index}")


def build_folder(config, runtime):
    """build --image_folder: load the model, index the photos (or update the index)."""
    model, encoder = load_with_encoder(config, runtime, config.model_path)
    start = time.time()
    built = folder.build_folder_index(model, encoder, config.index, config.image_folder, config.model_path,
                                      config.encoder_batch(), config.index_type, config.overwrite, config.update,
                                      config.workers, progress=not config.no_progress)
    if built is None:
        print(f"{config.index}: up to date with {config.image_folder} (no file added, changed or removed)")
        return
    manifest = built.manifest
    changes = (f"{built.encoded} encoded, {built.kept} kept, {built.dropped} removed; " if config.update else "")
    print(f"indexed {manifest['count']} photos of {config.image_folder} in {time.time() - start:.1f} s "
          f"({changes}{built.unreadable} unreadable, skipped): {manifest['index_type']} FAISS index of "
          f"{manifest['global']['kind']} vectors ({manifest['global']['size']}-d) -> {config.index}")


def run_query(config, runtime):
    """Search the index, print the hits, and write --json, --html and --explain."""
    texts = read_queries(config.queries) if config.queries is not None else [config.query]
    manifest = retrieval.read_manifest(config.index)
    model_path = check_against_index(config, manifest)
    model, encoder = load_with_encoder(config, runtime, model_path)
    gallery = retrieval.GalleryIndex.open(config.index, model, encoder)
    if config.shortlist_size() > config.shortlist:
        print(f"note: --shortlist {config.shortlist} is below --top_k {config.top_k}; X-Dim scores the "
              f"{config.shortlist_size()} best of stage one instead", file=sys.stderr)
    results = search(config, gallery, texts, model_path)
    for label, hits, seconds in results:
        print(f"{label}: top {len(hits)} of {len(gallery)} {gallery.gallery} "
              f"(X-Dim on {min(config.shortlist_size(), len(gallery))} shortlisted, {1000 * seconds:.0f} ms)")
        for hit in hits:
            print(f"  {hit.rank:3d}. {hit.score:8.4f}  #{hit.index}  {hit.item}")
    write_results(config, gallery, results)


def search(config, gallery, texts, model_path):
    """Search `gallery` for the texts, the photo or the split's image asked -> [(label, hits, seconds)]."""
    top_k, size = config.top_k, config.shortlist_size()
    if config.text_query:
        results = []
        for text in texts:
            warn_unknown_query(gallery.caption_tokenizer(), text)
            results.append(timed(text, gallery.search_text, text, top_k, size))
        return results
    if config.query_image is not None:
        img_emb, count = folder.encode_photo(gallery.model, model_path, config.query_image)
        return [timed(f"photo {config.query_image}", gallery.search_encoded_image, img_emb, count, top_k, size)]
    images = config.images or gallery.manifest["source"].get("query_images")
    if not images:
        raise XDimError("give --images FILE: the index's caption file has no {split}_ims.npy beside it")
    label, regions, count = split_image(images, gallery.model.config.img_dim, config.image_id, config.image_index)
    return [timed(label, gallery.search_image, regions, count, top_k, size)]


def timed(label, search_with, *args):
    """-> (label, search_with(*args), the seconds it took)."""
    start = time.time()
    hits = search_with(*args)
    return label, hits, time.time() - start


def write_results(config, gallery, results):
    """--json, --html and --explain of the query's `results`."""
    if config.json:
        write_json(config.json, [{"query": label, "seconds": seconds, "hits": retrieval.hits_as_dicts(hits)}
                                 for label, hits, seconds in results])
    if config.html:
        photos = photo_folder(config, gallery.manifest) if gallery.gallery == "images" else None
        html.write_hits_page(config.html, results, photos, config.query_image, f"X-Dim search of {config.index}",
                             len(gallery))
        print(f"wrote {config.html}")
    if config.explain:
        from lib.analysis.attention import explain_hits
        for text, hits, _ in results:
            for path in explain_hits(gallery, text, hits, photo_folder(config, gallery.manifest), config.explain):
                print(f"wrote {path}")


def photo_folder(config, manifest):
    """Where the indexed photos are (--image_folder, else the folder the index was built from), or None."""
    return config.image_folder or manifest["source"].get("image_folder")

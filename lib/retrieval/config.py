"""What retrieve.py's commands are asked to do: `DistillConfig`, `BuildConfig`, `QueryConfig`.

Each is built once by retrieve.py (lib.cli.retrieve) and passed down. Each field with a
help line is also its command's option (`--NAME`): type and default come from the field,
help, metavar, choices and `required` from its metadata, and fields sharing a `one_of`
name are options of which exactly one must be given (lib.cli.options.add_config_options),
so a new option of retrieve.py is one field here. `bert_path` is the shared --bert_path;
where the work runs is lib.runtime.device.RuntimeConfig.
"""
from dataclasses import dataclass, field

from lib.retrieval.index import APPROXIMATE_FROM, DEFAULT_SHORTLIST, DEFAULT_TOP_K, INDEX_TYPES
from lib.retrieval.shortlist import DEFAULT_SIZE, default_head_path

# Items per encoder batch when --batch_size is not given: captions or region features, and photos.
GALLERY_BATCH = 128
PHOTO_BATCH = 32


def head_field():
    """--head, the same option in build and query."""
    return field(default=None, metadata={
        "help": "shortlist head (default: the .shortlist.pth file beside the checkpoint if there is one, "
                "else parameter-free mean pooling)", "metavar": "FILE"})


def bert_path_field():
    """--bert_path: declared with the runtime options (lib.cli.options.add_runtime_options), not here."""
    return field(default=None)


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """retrieve.py distill: train a shortlist head on a split (lib.retrieval.shortlist.distill_head)."""

    model_path: str = field(metadata={"help": "X-Dim checkpoint (frozen, not modified)", "required": True})
    data_path: str | None = field(default=None, metadata={
        "help": "folder holding {data_name}/ (default: the checkpoint's)"})
    data_name: str | None = field(default=None, metadata={"help": "dataset folder name (default: the checkpoint's)"})
    split: str = field(default="train", metadata={"help": "split to distill on"})
    epochs: int = field(default=30, metadata={"help": "passes over the split's images"})
    batch_images: int = field(default=100, metadata={
        "help": "images per step, with all their captions: X-Dim scores this block"})
    learning_rate: float = field(default=2e-3, metadata={"help": "Adam learning rate, cosine decay"})
    temperature: float = field(default=0.05, metadata={"help": "temperature of the softmax over X-Dim's scores"})
    size: int = field(default=DEFAULT_SIZE, metadata={"help": "global vector size, plus 2 offset coordinates"})
    group: int = field(default=4, metadata={
        "help": "after the first epoch, batches are made of groups of this many images the head finds alike; "
                "1: random batches"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    out: str | None = field(default=None, metadata={
        "help": "head file (default: beside the checkpoint, *.shortlist.pth)", "metavar": "FILE"})
    bert_path: str | None = bert_path_field()

    reads_region_features = True  # X-Dim scores the split's region features: no raw-image checkpoint

    def head_path(self):
        """Where the head is written: --out, else beside the checkpoint."""
        return self.out or default_head_path(self.model_path)


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """retrieve.py build: encode a gallery (region features, captions or a photo folder) into an index."""

    model_path: str = field(metadata={"help": "X-Dim checkpoint", "required": True})
    head: str | None = head_field()
    images: str | None = field(default=None, metadata={
        "help": "{split}_ims.npy: an image gallery, for text queries", "metavar": "FILE", "one_of": "gallery"})
    captions: str | None = field(default=None, metadata={
        "help": "a text file, one caption per line: a caption gallery, for image queries", "metavar": "FILE",
        "one_of": "gallery"})
    image_folder: str | None = field(default=None, metadata={
        "help": "a folder of photos (JPEG, PNG, WebP, searched recursively; never written): an image gallery "
                "of a raw-image checkpoint, items are paths relative to DIR", "metavar": "DIR", "one_of": "gallery"})
    index: str = field(metadata={"help": "index folder to create", "metavar": "DIR", "required": True})
    index_type: str = field(default="auto", metadata={
        "help": f"stage-one index: exact inner product (flat), HNSW, or auto: flat below {APPROXIMATE_FROM:,} "
                "items", "choices": INDEX_TYPES})
    batch_size: int | None = field(default=None, metadata={
        "help": f"items per encoder batch (default {GALLERY_BATCH}, and {PHOTO_BATCH} photos for --image_folder)"})
    update: bool = field(default=False, metadata={
        "help": "with --image_folder: refresh an existing index, encoding only the new or changed files and "
                "dropping removed ones; the old index answers queries until the swap"})
    workers: int = field(default=0, metadata={"help": "processes decoding photos for --image_folder; 0: in this one"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing index (only a folder whose manifest says it is one)"})
    no_progress: bool = field(default=False, metadata={"help": "hide the progress bars"})
    bert_path: str | None = bert_path_field()

    @property
    def reads_region_features(self):
        """True for a gallery of region features (--images): a raw-image checkpoint cannot encode it."""
        return self.images is not None

    def encoder_batch(self):
        """Items per encoder batch: --batch_size, else the default of the gallery's kind."""
        return self.batch_size or (PHOTO_BATCH if self.image_folder is not None else GALLERY_BATCH)


@dataclass(frozen=True, kw_only=True)
class QueryConfig:
    """retrieve.py query: search an index with texts, an image of a split, or a photo."""

    index: str = field(metadata={"help": "index folder (retrieve.py build)", "metavar": "DIR", "required": True})
    query: str | None = field(default=None, metadata={"help": "text to search images for", "one_of": "query"})
    queries: str | None = field(default=None, metadata={
        "help": "text file, one query per line", "metavar": "FILE", "one_of": "query"})
    image_index: int | None = field(default=None, metadata={
        "help": "row N of --images: search captions for it", "metavar": "N", "one_of": "query"})
    image_id: str | None = field(default=None, metadata={
        "help": "the image with this id in the {split}_ids.txt beside --images", "metavar": "ID", "one_of": "query"})
    query_image: str | None = field(default=None, metadata={
        "help": "a photo (JPEG, PNG, WebP): search a caption gallery for it (raw-image checkpoint)",
        "metavar": "FILE", "one_of": "query"})
    images: str | None = field(default=None, metadata={
        "help": "{split}_ims.npy holding the query image (default: the one beside the caption file the index "
                "was built from)", "metavar": "FILE"})
    top_k: int = field(default=DEFAULT_TOP_K, metadata={"help": "results per query"})
    shortlist: int = field(default=DEFAULT_SHORTLIST, metadata={
        "help": "stage-one candidates that X-Dim scores per query"})
    json: str | None = field(default=None, metadata={
        "help": "also write the results to this JSON file", "metavar": "FILE"})
    html: str | None = field(default=None, metadata={
        "help": "also write a page of the results with thumbnails, one self-contained file", "metavar": "FILE"})
    explain: str | None = field(default=None, metadata={
        "help": "also draw, for each text query and each of its hits, what each word attended to "
                "(figures in DIR, see docs/analysis.md)", "metavar": "DIR"})
    image_folder: str | None = field(default=None, metadata={
        "help": "where the indexed photos are now, for --html and --explain (default: the folder the index "
                "was built from)", "metavar": "DIR"})
    model_path: str | None = field(default=None, metadata={
        "help": "X-Dim checkpoint (default: the one the index was built with)"})
    head: str | None = head_field()
    bert_path: str | None = bert_path_field()

    @property
    def text_query(self):
        """True for --query and --queries (an image gallery answers), False for an image asked."""
        return self.query is not None or self.queries is not None

    @property
    def reads_region_features(self):
        """True for --image_index and --image_id: the query image is read from region features."""
        return not self.text_query and self.query_image is None

    def shortlist_size(self):
        """Candidates X-Dim scores per query: --shortlist, at least --top_k."""
        return max(self.shortlist, self.top_k)

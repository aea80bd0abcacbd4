"""What analyze.py looks at and where it writes: `AnalyzeConfig`.

Built once by the entry point (lib.cli.analyze) and passed down; each field with a help
line is also its command-line option (lib.cli.options.add_config_options).
"""
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class AnalyzeConfig:
    """One report: the checkpoint, the output folder, and what to draw beyond the mask figures
    (concepts of `words`, one `pair`'s attention, or one photo and caption of a raw-image model).
    `bert_path` is the shared --bert_path option."""

    model_path: str = field(metadata={
        "help": "checkpoint to analyse (ours or the official release's)", "required": True})
    out: str = field(metadata={
        "help": "folder for the figures and summary.json (created if needed)", "required": True})
    data_path: str | None = field(default=None, metadata={
        "help": "folder holding {data_name}/, for --words and --pair (default: the checkpoint's)"})
    data_name: str | None = field(default=None, metadata={
        "help": "f30k_precomp, coco_precomp, ... (default: the checkpoint's)"})
    split: str = field(default="test", metadata={"help": "split whose captions and images --words and --pair use"})
    words: tuple[str, ...] = field(default=(), metadata={
        "help": "words whose per-dimension participation probabilities to draw, e.g. --words dog man",
        "nargs": "+", "metavar": "WORD"})
    top_k: int | None = field(default=None, metadata={
        "help": "a dimension takes part in an occurrence of a word when it is among the top_k "
                "of its correspondence vector (default: 5%% of the embedding size)"})
    pair: tuple[int, int] | None = field(default=None, metadata={
        "help": "draw the words x regions attention of this image and caption (indices in the split)",
        "nargs": 2, "metavar": ("IMAGE", "CAPTION")})
    photo: str | None = field(default=None, metadata={
        "help": "with --pair on region features: the pair image's file; its most attended detector boxes "
                "({split}_boxes.npy) are drawn on it", "metavar": "FILE"})
    image: str | None = field(default=None, metadata={
        "help": "a photo, with --caption, for a raw-image (backbone-mode) checkpoint: each word's attention "
                "as a heat map over it (only this figure is drawn)", "metavar": "FILE"})
    caption: str | None = field(default=None, metadata={"help": "the sentence for --image", "metavar": "TEXT"})
    no_progress: bool = field(default=False, metadata={"help": "hide the progress bars"})
    bert_path: str | None = None

    @property
    def progress(self):
        """Whether to show progress bars."""
        return not self.no_progress

"""What a query of an index is made of: the texts of a --queries file, a warning for a text
the checkpoint's vocabulary does not know, and an image of a split picked by row or id."""
import os
import sys

from lib.data.precomp import read_captions
from lib.errors import XDimError
from lib.retrieval.index import load_gallery_images


def read_queries(path):
    """The lines of a --queries file; XDimError for a folder, a missing file, one without text
    or a bad line (lib.data.precomp.read_captions)."""
    if os.path.isdir(path):
        raise XDimError(f"--queries {path}: is a folder, give a text file with one query per line")
    if not os.path.isfile(path):
        raise XDimError(f"--queries {path}: no such file")
    with open(path, "rb") as f:
        if not f.read().strip():
            raise XDimError(f"--queries {path}: is empty, give one query per line")
    return read_captions(path)


def warn_unknown_query(caption_tokenizer, text):
    """Say on stderr when no word of a text query is in the vocabulary of `caption_tokenizer`
    (lib.data.precomp.CaptionTokenizer): each becomes [UNK], so the ranking answers nothing that was asked."""
    tokenizer = caption_tokenizer.tokenizer
    pieces = tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
    if pieces and all(piece == tokenizer.unk_token_id for piece in pieces):
        print(f"warning: query {text.strip()!r}: none of its words is in the checkpoint's vocabulary, all read as "
              f"[UNK]; the results below do not depend on what was asked", file=sys.stderr)


def split_image(path, img_dim, image_id=None, image_index=None):
    """The image of the {split}_ims.npy file `path` with id `image_id`, else at row `image_index`
    -> (label, region features (R, img_dim), real regions). XDimError for an unknown id or row."""
    images, ids, counts = load_gallery_images(path, img_dim)
    if image_id is not None:
        if image_id not in ids:
            raise XDimError(f"--image_id {image_id}: unknown id (not in the ids of {path})")
        row = ids.index(image_id)
    else:
        row = image_index
        if not 0 <= row < len(images):
            raise XDimError(f"--image_index {row}: out of range, {path} holds images 0..{len(images) - 1}")
    return f"image {ids[row]} (row {row} of {path})", images[row], int(counts[row])

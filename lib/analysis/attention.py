"""What each word looked at: the word-to-region attention behind one image-caption score, on the photo.

X-Dim scores a pair as the mean of its word scores; each word first attends over the
image's regions (steps 1-3 of the similarity, `Similarity.explain`). Here that attention
is drawn on the photo itself:

- a raw-image (backbone) model's regions are the cells of an h x w grid laid over the
  whole image (the evaluation pipeline resizes the whole photo to a square, so cell
  (i, j) covers rows i/h..(i+1)/h and columns j/w..(j+1)/w of the photo, whatever its
  aspect ratio): each word's attention is a heat map over the photo (`cell_heat`);
- a region model's regions are detector boxes (`S_boxes.npy`, x1 y1 x2 y2 in pixels of
  the original photo): each word's most attended boxes are outlined (`top_regions`).

Each figure also gives the pair's score and each word's share of it (its word score
over the sum of word scores: the score is their mean). `explain_hits` draws one figure per
hit of a query (retrieve.py query --explain); analyze.py --image/--caption one pair.
"""
import math
import os
import sys

import numpy as np
import torch

from lib.analysis import figures
from lib.data.precomp import split_file
from lib.errors import XDimError

TOP_REGIONS = 3


def explain_pair(model, img_emb, token_ids, img_len=None):
    """The attention behind the score of one encoded image and one caption.

    img_emb (1, R, d) (or (R, d)); token_ids (L,) int64 of the caption; img_len: real regions or None.
    -> {"attention" (L, R), "word_scores" (L,), "shares" (L,), all float64 numpy, "score" float}.
    XDimError when the model's similarity has no word-to-region attention.
    """
    if not hasattr(model.sim, "explain"):
        raise XDimError(f"similarity {model.config.sim!r} has no word-to-region attention to draw")
    img = torch.as_tensor(img_emb).float().reshape(1, -1, model.config.embed_size).to(model.device)
    ids = torch.as_tensor(token_ids).long().reshape(1, -1)
    lens = torch.tensor([ids.shape[1]], device=model.device)
    img_lens = None if img_len is None else torch.tensor([int(img_len)], device=model.device)
    model.val_start()
    with torch.no_grad():
        cap = model.encode_captions(ids, lens)
        parts = model.sim.explain(img, cap, lens, img_lens)
    word_scores = parts["word_scores"][0].double().cpu().numpy()
    return {"attention": parts["attention"][0].double().cpu().numpy(), "word_scores": word_scores,
            "shares": word_scores / word_scores.sum(), "score": float(parts["scores"][0])}


def grid_shape(regions):
    """(h, w) of a square grid of `regions` cells; XDimError when it is not a square."""
    side = math.isqrt(regions)
    if side * side != regions:
        raise XDimError(f"{regions} regions are not a square grid of cells; this is not a raw-image model's index")
    return side, side


def cell_heat(attention, grid, photo_shape):
    """One word's attention over the grid cells as a map over the photo.

    attention (h * w,) in row-major cell order; grid (h, w); photo_shape (H, W).
    -> (H, W) float64: each pixel holds the attention of the cell that covers it.
    """
    h, w = grid
    cells = np.asarray(attention, dtype=np.float64).reshape(h, w)
    rows = (2 * np.arange(photo_shape[0]) + 1) * h // (2 * photo_shape[0])  # the cell under each pixel's centre
    columns = (2 * np.arange(photo_shape[1]) + 1) * w // (2 * photo_shape[1])
    return cells[np.ix_(rows, columns)]


def top_regions(attention, k=TOP_REGIONS):
    """The `k` most attended regions of one word, most attended first: attention (R,) -> (k,) int64."""
    return np.argsort(-np.asarray(attention), kind="stable")[:k]


def tokens_of(tokenizer, token_ids):
    """The WordPiece strings of a caption's token ids."""
    return tokenizer.convert_ids_to_tokens([int(i) for i in token_ids])


def draw_pair(path, rgb, tokens, pair, title, boxes=None):
    """The figure of one pair: heat maps over the grid (boxes None) or the top boxes of each word.

    rgb (H, W, 3) uint8 photo; pair: explain_pair's dict; boxes (R, 4) x1 y1 x2 y2 or None.
    """
    attention = pair["attention"]
    if boxes is None:
        grid = grid_shape(attention.shape[1])
        maps = [cell_heat(row, grid, rgb.shape[:2]) for row in attention]
        figures.photo_attention(rgb, tokens, maps, pair["shares"], pair["score"], title, path)
    else:
        chosen = [[(boxes[r], row[r]) for r in top_regions(row)] for row in attention]
        figures.photo_boxes(rgb, tokens, chosen, pair["shares"], pair["score"], title, path)


def _file_stem(item):
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in item)[-60:]


def explain_hits(gallery, text, hits, photo_folder, out):
    """retrieve.py query --explain: one figure per hit of a text query in `out` -> the paths written.

    gallery: an opened image GalleryIndex; hits: its Hits for `text`; photo_folder: where a
    folder gallery's photos are (None: no photos; the attention is drawn over region numbers).
    """
    from lib.data.images import read_rgb
    from lib.retrieval.html import photo_path
    model = gallery.model
    token_ids = gallery.caption_tokenizer().encode(text.strip())
    tokens = tokens_of(gallery.caption_tokenizer().tokenizer, token_ids)
    regions, lengths = gallery.embeddings
    os.makedirs(out, exist_ok=True)
    written = []
    for hit in hits:
        pair = explain_pair(model, regions.rows([hit.index]), token_ids, int(lengths[hit.index]))
        path = os.path.join(out, f"explain_{_file_stem(text)}_{hit.rank}_{_file_stem(hit.item)}.png")
        title = f"{text[:60]} | rank {hit.rank}: {hit.item}"
        rgb = None
        if photo_folder is not None:
            try:
                rgb, _ = read_rgb(photo_path(photo_folder, hit.item))
            except XDimError as err:
                print(f"warning: {err}; its figure shows the attention over the cell numbers "
                      f"(query --image_folder says where the photos are now)", file=sys.stderr)
        if rgb is not None:
            draw_pair(path, rgb, tokens, pair, title)
        else:
            figures.pair_attention(tokens, pair["attention"], pair["shares"], pair["score"], title, path)
        written.append(path)
    return written


def _pair_summary(tokens, pair):
    return {"tokens": tokens, "score": pair["score"], "word_scores": pair["word_scores"].tolist(),
            "shares": pair["shares"].tolist()}


def photo_report(model, model_path, image_path, caption, out):
    """analyze.py --image --caption (a raw-image model): the figure of each word's attention over the photo.

    -> (summary dict, figure file name). XDimError for a region model, a file that is not
    an image, an empty caption.
    """
    from lib.data.images import read_rgb
    from lib.evaluation.scoring import model_caption_tokenizer
    from lib.retrieval.folder import encode_photo
    if not caption.strip():
        raise XDimError("--caption: empty; give the sentence whose words to draw")
    figures.require_matplotlib()
    img_emb, _ = encode_photo(model, model_path, image_path, option="--image")
    encoder = model_caption_tokenizer(model)
    token_ids = encoder.encode(caption.strip())
    pair = explain_pair(model, img_emb, token_ids)
    tokens = tokens_of(encoder.tokenizer, token_ids)
    name = f"words_{_file_stem(os.path.splitext(os.path.basename(image_path))[0])}.png"
    os.makedirs(out, exist_ok=True)
    draw_pair(os.path.join(out, name), read_rgb(image_path)[0], tokens, pair,
              f"{caption[:70]} | {os.path.basename(image_path)}")
    return {"image": image_path, "caption": caption, **_pair_summary(tokens, pair)}, name


def boxes_path(split):
    """The {split}_boxes.npy beside a split's {split}_ims.npy (convert_features.py writes it)."""
    return split_file(split.images_path, "_boxes.npy")


def read_boxes(split, image):
    """The detector boxes (R, 4) x1 y1 x2 y2 of image `image` of a region split; XDimError without the file."""
    path = boxes_path(split)
    if not os.path.isfile(path):
        raise XDimError(f"--photo: no {os.path.basename(path)} beside {split.images_path}; the boxes come from "
                        f"convert_features.py (which writes it from the detector's TSV files)")
    boxes = np.load(path, mmap_mode="r", allow_pickle=False)
    if boxes.shape[:2] != (split.n_images, split.images.shape[1]) or boxes.shape[2:] != (4,):
        raise XDimError(f"{path}: holds {boxes.shape}, expected ({split.n_images}, {split.images.shape[1]}, 4) "
                        f"for {split.images_path}; convert the features again")
    return np.array(boxes[image], dtype=np.float64)


def boxes_report(pair, tokens, split, image, caption, photo, out):
    """analyze.py --pair I C --photo FILE (a region model): each word's most attended boxes on the photo.

    pair: lib.analysis.statistics.pair_analysis's dict. -> the figure file name.
    """
    from lib.data.images import read_rgb
    rgb, _ = read_rgb(photo)
    name = f"pair_{image}_{caption}_boxes.png"
    draw_pair(os.path.join(out, name), rgb, tokens, pair, f"image {image}, caption {caption}: "
              f"{os.path.basename(photo)}", boxes=read_boxes(split, image))
    return name

"""Scoring a split with a model: encode every image and caption once, then score in shards.

1. `encode_split` (lib/evaluation/encoding.py) runs every image through the
   image encoder once and every caption through the text encoder once. Image
   embeddings are kept as one `(n_img, R, d)` tensor, caption embeddings as
   `RaggedCaptions` (all real tokens concatenated plus offsets), never as a
   padded float64 array.
2. `score_sharded` fills the `(n_img, n_cap)` float32 score matrix block by
   block with the similarity, in the blocks of the one scheduler that training uses
   too (lib/model/similarity/blocks.py: length-sorted caption runs, a bounded number of
   (image, real token) rows per block); its `prepare()` runs once per split.
3. lib.evaluation.metrics turns the matrix into recalls.

Under torchrun the work is shared: each process encodes its share of the images
and captions, receives every caption (`encode_shares`), scores its own image rows,
and rank 0 gathers the rows (`gather_image_rows`); lib.runtime.distributed has the
process-group helpers.

Entry points for other modules:
- `evaluate_split(model, split_files, caption_tokenizer, batch_size=128, workers=0)
  -> (sims, metrics)`: the whole pipeline on one split (on rank 0 under torchrun).
- `split_metrics(model, split_files, caption_tokenizer, ...) -> metrics` (same, metrics only;
  the training loop's validation).
"""
import numpy as np
import torch
from tqdm import tqdm

from lib.errors import XDimError
from lib.evaluation.encoding import RaggedCaptions, encode_split
from lib.evaluation.metrics import evaluate_sims
from lib.model.similarity.blocks import plan, row_budget, score_blocks
from lib.runtime import distributed


def score_sharded(img_emb, captions, similarity, rows_per_block=None, device="cpu", progress=True):
    """Score every image against every caption with the block scheduler (lib/model/similarity/blocks.py).

    img_emb (n_img, R, d) in any storage dtype; captions: RaggedCaptions; similarity: a
    lib.model.similarity Similarity. Each caption run is gathered from the ragged storage and
    moved to `device` once, each image block when it is scored (as float32); a run's
    scores come back from the device in one piece.
    -> float32 numpy (n_img, n_cap) in the original caption order.
    """
    n_img, n_cap = len(img_emb), len(captions)
    sims = np.empty((n_img, n_cap), dtype=np.float32)
    blocks = plan(captions.lengths, n_img, row_budget(similarity, device, rows_per_block))

    def captions_of(run):
        cap, lens = captions.gather(run.columns)
        return cap.to(device), lens.to(device)

    def images_of(i0, i1):
        return img_emb[i0:i1].to(device=device, dtype=torch.float32), None

    with tqdm(total=n_img * n_cap, desc="score", unit="pair", unit_scale=True, disable=not progress) as bar:
        for run, scores in score_blocks(similarity, blocks, captions_of, images_of):
            sims[:, run.columns.numpy()] = scores.detach().float().cpu().numpy()
            bar.update(scores.numel())
    return sims


def model_sims(model, img_emb, captions, rows_per_block=None, progress=True):
    """The model's (n_img, n_cap) float32 scores, as forward_sim computes them (autocast included)."""
    model.val_start()
    with torch.no_grad(), model.autocast():
        return score_sharded(img_emb, captions, model.sim, rows_per_block, model.device, progress)


def open_model_split(model, data_path=None, data_name=None, split="test", image_root=None):
    """The split a model is evaluated on (data_path/data_name, and image_root for a raw-image
    model, default to those it was trained on).

    -> (split files: precomp.SplitFiles, or images.ImageSplit for a raw-image model; caption
    tokenizer for the model's BERT; table label "data_name split").
    """
    trained_on = model.trained_with or {}
    data_path = data_path or trained_on.get("data_path")
    data_name = data_name or trained_on.get("data_name")
    if not data_path or not data_name:
        raise XDimError("the checkpoint does not say which data it was trained on: give --data_path and --data_name")
    try:
        if model.config.uses_backbone:
            from lib.data.images import open_image_split
            files = open_image_split(data_path, data_name, split, image_root or trained_on.get("image_root") or None)
        else:
            from lib.data.precomp import open_split
            files = open_split(data_path, data_name, split, img_dim=model.config.img_dim)
    except XDimError as error:
        trained_name = trained_on.get("data_name")
        if not trained_name or trained_name == data_name:
            raise
        raise XDimError(f"{error}; this checkpoint was trained on --data_name {trained_name}: add "
                        f"--data_name {trained_name}") from None
    return files, model_caption_tokenizer(model), f"{data_name} {split}"


def image_source(split_files):
    """The file naming a split's images: its region features (precomp.SplitFiles.images_path), or
    for image files its ids file (images.ImageSplit.ids_path)."""
    return getattr(split_files, "images_path", None) or split_files.ids_path


def model_caption_tokenizer(model):
    """The CaptionTokenizer of a model's BERT: its tokenizer, captions cut to its position limit."""
    from lib.data.precomp import CaptionTokenizer
    from lib.model.bert import load_tokenizer
    return CaptionTokenizer(load_tokenizer(model.bert_path), model.bert_config["max_position_embeddings"])


def encode_shares(model, split_files, caption_tokenizer, batch_size=128, workers=0, storage="float32",
                  progress=True):
    """This process's images and every caption of the split.

    -> (img_emb (n_k, R, d) of the images distributed.shard gives this process, RaggedCaptions
    of all captions). In one process: encode_split. Under torchrun each process encodes its
    share of the images and of the captions and the captions are gathered, ragged, on every
    process; a failure in any process (a NaN image in its share) raises in all of them.
    """
    with distributed.together():
        image_rows = distributed.shard(split_files.n_images, batch_size, f"images of {image_source(split_files)}")
        caption_rows = distributed.shard(split_files.n_captions, batch_size,
                                         f"captions of {split_files.captions_path}")
        img_emb, captions = encode_split(model, split_files, caption_tokenizer, batch_size, workers, storage,
                                         progress, image_rows, caption_rows)
    if not distributed.is_distributed():
        return img_emb, captions
    return img_emb, RaggedCaptions.from_tokens(*distributed.all_gather_ragged(captions.tokens, captions.lengths))


def gather_image_rows(rows, n_images, batch_size=128):
    """Every process's rows of per-image results (this process's `rows` (n_k, ...) numpy, its
    images as encode_shares chose them) -> (n_images, ...) numpy on rank 0, None elsewhere."""
    counts = distributed.shard_sizes(n_images, batch_size)
    whole = distributed.gather_to_main(torch.from_numpy(rows), counts)
    return None if whole is None else whole.numpy()


def split_scores(model, split_files, caption_tokenizer, batch_size=128, workers=0, storage="float32",
                 rows_per_block=None, progress=True):
    """Encode and score one split (split_files from lib.data.precomp.open_split).

    -> (sims float32 numpy (n_img, n_cap) on rank 0, None on the other processes; this
    process's img_emb (n_k, R, d) and the RaggedCaptions of every caption, for more work on
    the same embeddings, e.g. the shortlist's global vectors). Leaves the model in eval mode.
    Under torchrun every process calls this and scores its own images against all captions
    (encode_shares).
    """
    progress = progress and distributed.is_main()
    img_emb, captions = encode_shares(model, split_files, caption_tokenizer, batch_size, workers, storage, progress)
    with distributed.together():
        sims = model_sims(model, img_emb, captions, rows_per_block, progress)
    return gather_image_rows(sims, split_files.n_images, batch_size), img_emb, captions


def evaluate_split(model, split_files, caption_tokenizer, batch_size=128, workers=0, storage="float32",
                   rows_per_block=None, progress=True):
    """split_scores' sims and the metrics dict of the whole matrix (METRIC_KEYS, 'rsum' included);
    (None, None) on processes other than rank 0."""
    sims, _, _ = split_scores(model, split_files, caption_tokenizer, batch_size, workers, storage, rows_per_block,
                              progress)
    if sims is None:
        return None, None
    return sims, evaluate_sims(sims, split_files.captions_per_image)[0]


def split_metrics(model, split_files, caption_tokenizer, batch_size=128, workers=0, progress=True):
    """Metrics dict (with 'rsum') of `split_files` (e.g. dev) for the training loop; under
    torchrun every process takes part and rank 0 gets the metrics, the others None."""
    return evaluate_split(model, split_files, caption_tokenizer, batch_size, workers,
                          progress=progress)[1]

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
import sys

from lib.cli.entry import entry_point
from lib.cli.retrieve import check_retrieval_options, retrieval_configs, retrieval_parser, run_retrieval_command


@entry_point
def main(argv=None):
    config, runtime = retrieval_configs(retrieval_parser(__doc__).parse_args(argv))
    check_retrieval_options(config, runtime)
    run_retrieval_command(config, runtime)


if __name__ == "__main__":
    sys.exit(main())

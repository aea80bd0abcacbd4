"""lib/retrieval/config.py: what each command's config derives from its options (the head file, the
encoder batch, which queries read region features, the shortlist at least top_k)."""
import pytest

from lib.retrieval.config import BuildConfig, DistillConfig, QueryConfig


def test_the_head_goes_beside_the_checkpoint_unless_out_says():
    assert DistillConfig(model_path="runs/x/model_best.pth").head_path() == "runs/x/model_best.shortlist.pth"
    assert DistillConfig(model_path="runs/x/model_best.pth", out="h.pth").head_path() == "h.pth"


@pytest.mark.parametrize("gallery, batch_size, expected", [
    ({"images": "g_ims.npy"}, None, 128), ({"captions": "g_caps.txt"}, None, 128),
    ({"image_folder": "album"}, None, 32), ({"image_folder": "album"}, 5, 5), ({"images": "g_ims.npy"}, 7, 7),
])
def test_the_encoder_batch_is_the_option_else_the_default_of_the_gallery(gallery, batch_size, expected):
    assert BuildConfig(model_path="m", index="i", batch_size=batch_size, **gallery).encoder_batch() == expected


@pytest.mark.parametrize("asked, text, regions", [
    ({"query": "a dog"}, True, False), ({"queries": "q.txt"}, True, False), ({"query_image": "p.jpg"}, False, False),
    ({"image_index": 0}, False, True), ({"image_id": "391895"}, False, True),
])
def test_which_queries_read_region_features(asked, text, regions):
    config = QueryConfig(index="i", **asked)
    assert config.text_query is text and config.reads_region_features is regions


def test_a_photo_gallery_or_captions_take_a_raw_image_checkpoint_and_region_features_do_not():
    assert BuildConfig(model_path="m", index="i", images="g_ims.npy").reads_region_features
    assert not BuildConfig(model_path="m", index="i", captions="c.txt").reads_region_features
    assert not BuildConfig(model_path="m", index="i", image_folder="album").reads_region_features
    assert DistillConfig(model_path="m").reads_region_features


@pytest.mark.parametrize("shortlist, top_k, expected", [(100, 10, 100), (5, 10, 10), (10, 10, 10)])
def test_the_shortlist_is_at_least_top_k(shortlist, top_k, expected):
    assert QueryConfig(index="i", query="x", shortlist=shortlist, top_k=top_k).shortlist_size() == expected


def test_required_fields_have_no_default():
    with pytest.raises(TypeError):
        BuildConfig(images="g_ims.npy", index="i")
    with pytest.raises(TypeError):
        QueryConfig(query="x")

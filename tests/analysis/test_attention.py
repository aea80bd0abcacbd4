"""What each word looked at (lib/analysis/attention.py, analyze.py --image/--caption and --pair --photo,
retrieve.py query --explain): planted attention lands on its cell, shares and scores match the model."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import checkpoint_of, model_from_options, run_main
from photos import GRID_CELLS, backbone_checkpoint, write_album, write_photo

import analyze
import retrieve
from lib.analysis import attention
from lib.cli.train import default_options
from lib.data.images import PixelConfig
from lib.data.precomp import CaptionTokenizer
from lib.errors import XDimError
from lib.formats.checkpoint import save_checkpoint
from lib.model.bert import load_tokenizer
from lib.retrieval import folder as folders

CAPTION = "a red car near a blue dog"


@pytest.fixture(scope="module")
def grid_model(tmp_path_factory, tiny_bert_dir):
    base = tmp_path_factory.mktemp("grid_model")
    path = base / "grid.pth"
    return str(path), backbone_checkpoint(path, tiny_bert_dir)


@pytest.mark.parametrize("cell", [(1, 3), (3, 0), (0, 0), (2, 2)])
def test_the_hottest_cell_of_a_planted_attention_is_where_it_was_planted(cell):
    """A 4 x 4 grid over a 60 x 100 photo (not square): cell (1, 3) covers rows 15-29 and columns 75-99."""
    weights = np.full(16, 0.01)
    weights[cell[0] * 4 + cell[1]] = 0.85
    heat = attention.cell_heat(weights, (4, 4), (60, 100))
    assert heat.shape == (60, 100)
    hot = np.argwhere(heat == heat.max())
    rows, columns = range(cell[0] * 15, cell[0] * 15 + 15), range(cell[1] * 25, cell[1] * 25 + 25)
    assert {int(r) for r in hot[:, 0]} == set(rows)
    assert {int(c) for c in hot[:, 1]} == set(columns)
    assert np.isclose(heat.sum(), 0.85 * 15 * 25 + 0.01 * (60 * 100 - 15 * 25))


def test_grid_shape_and_top_regions():
    assert attention.grid_shape(256) == (16, 16)
    with pytest.raises(XDimError, match="not a square grid"):
        attention.grid_shape(36 + 1)
    assert attention.top_regions([0.1, 0.5, 0.05, 0.3], 2).tolist() == [1, 3]


def _direct_score(model, photo, caption):
    pixels = folders.load_pixels(photo, PixelConfig.for_model(model.config))
    ids = torch.tensor([CaptionTokenizer(load_tokenizer(model.bert_path), 64).encode(caption)])
    with torch.no_grad():
        return float(model.forward_sim(model.encode_images(pixels[None]), model.encode_captions(ids),
                                       torch.tensor([ids.shape[1]]))[0, 0])


def test_analyze_image_draws_each_word_on_the_photo(grid_model, tmp_path):
    path, model = grid_model
    photo = write_photo(str(tmp_path / "beach.jpg"), (200, 180, 40), size=(60, 90))
    out = tmp_path / "out"
    run = run_main(analyze.main, ["--model_path", path, "--out", str(out), "--image", photo, "--caption", CAPTION])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["figures"] == ["words_beach.png"] and (out / "words_beach.png").stat().st_size > 1000
    pair = summary["photo"]
    assert pair["tokens"][0] == "[CLS]" and pair["tokens"][-1] == "[SEP]" and "dog" in pair["tokens"]
    assert abs(sum(pair["shares"]) - 1) < 1e-9
    assert abs(np.mean(pair["word_scores"]) - pair["score"]) < 1e-6
    assert abs(pair["score"] - _direct_score(model, photo, CAPTION)) < 1e-5
    assert f"score {pair['score']:.4f}" in run.out


def test_explained_attention_covers_the_grid(grid_model, tmp_path):
    path, model = grid_model
    photo = write_photo(str(tmp_path / "p.png"), (10, 200, 40))
    img_emb, _ = folders.encode_photo(model, path, photo)
    ids = CaptionTokenizer(load_tokenizer(model.bert_path), 64).encode(CAPTION)
    pair = attention.explain_pair(model, img_emb, ids)
    assert pair["attention"].shape == (len(ids), GRID_CELLS)
    np.testing.assert_allclose(pair["attention"].sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--image", "PHOTO"], "--image and --caption go together"),
    (["--image", "NOTES", "--caption", "a dog"], "not an image file"),
    (["--image", "MISSING", "--caption", "a dog"], "no such file"),
    (["--photo", "PHOTO"], "give --pair IMAGE CAPTION too"),
])
def test_bad_photo_options_are_one_error_line(grid_model, tmp_path, argv, message):
    photo = write_photo(str(tmp_path / "p.png"), (1, 2, 3))
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    names = {"PHOTO": photo, "NOTES": str(notes), "MISSING": str(tmp_path / "none.jpg")}
    argv = [names.get(a, a) for a in argv]
    run = run_main(analyze.main, ["--model_path", grid_model[0], "--out", str(tmp_path / "out"), *argv], expect=2)
    assert run.err.startswith("error: ") and message in run.err and run.err.count("\n") == 1
    assert not (tmp_path / "out" / "summary.json").exists()


def test_a_region_model_with_boxes_draws_its_most_attended_boxes(tmp_path, tiny_precomp, tiny_bert_dir):
    data_path, data_name = tiny_precomp
    data = tmp_path / "data"
    shutil.copytree(os.path.join(data_path, data_name), data / data_name)
    opt = default_options(embed_size=16, img_dim=32, bert_path=tiny_bert_dir, device="cpu", workers=0,
                          data_path=str(data), data_name=data_name)
    path = str(tmp_path / "regions.pth")
    save_checkpoint(checkpoint_of(model_from_options(opt), opt), path)
    photo = write_photo(str(tmp_path / "img0.jpg"), (90, 90, 90), size=(60, 90))
    common = ["--model_path", path, "--out", str(tmp_path / "out"), "--pair", "0", "0", "--photo", photo]
    missing = run_main(analyze.main, common, expect=2)
    assert "no test_boxes.npy beside" in missing.err and "convert_features.py" in missing.err
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 40, (10, 36, 2))
    np.save(data / data_name / "test_boxes.npy",
            np.concatenate([corners, corners + rng.uniform(5, 40, (10, 36, 2))], axis=2).astype(np.float32))
    run_main(analyze.main, common)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"pair_0_0.png", "pair_0_0_boxes.png"} <= set(summary["figures"])
    assert (tmp_path / "out" / "pair_0_0_boxes.png").stat().st_size > 1000


@pytest.fixture
def album_index(grid_model, tmp_path):
    """(album folder, its index) of 4 photos, built by the CLI with the grid model."""
    album, index = str(tmp_path / "album"), str(tmp_path / "index")
    write_album(album, n=4)
    run_main(retrieve.main, ["build", "--model_path", grid_model[0], "--image_folder", album, "--index", index,
                             "--no_progress"])
    return album, index


def test_query_explain_draws_one_figure_per_hit(album_index, tmp_path):
    out = tmp_path / "why"
    run = run_main(retrieve.main, ["query", "--index", album_index[1], "--query", CAPTION, "--top_k", "3",
                                   "--explain", str(out)])
    hits = [line.split()[-1] for line in run.out.splitlines() if line.startswith("    ")]
    figures = sorted(os.listdir(out))
    assert len(figures) == 3 and run.out.count("wrote ") == 3
    for rank, item in enumerate(hits, start=1):
        assert f"explain_a_red_car_near_a_blue_dog_{rank}_{item.replace('/', '_').replace('.', '_')}.png" in figures


def test_explain_without_the_photos_warns_and_draws_the_cells(album_index, tmp_path):
    album, index = album_index
    shutil.rmtree(album)
    run = run_main(retrieve.main, ["query", "--index", index, "--query", CAPTION, "--top_k", "2",
                                   "--explain", str(tmp_path / "why")])
    assert run.err.count("warning: ") == 2 and "query --image_folder" in run.err
    assert len(os.listdir(tmp_path / "why")) == 2

"""analyze.py and lib/analysis/statistics.py: dependency order, mask statistics, concept statistics, figures."""
import json
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from builders import checkpoint_of, model_from_options
from conftest import TINY_IMG_DIM
from official_format import official_opt, official_parts, write_official_checkpoint

import analyze as analyze_cli
from lib.analysis import figures
from lib.analysis import statistics as analysis
from lib.cli.options import default_options
from lib.data.precomp import CaptionEncoder, open_split
from lib.data.synthetic import DEMO_OBJECTS
from lib.errors import XDimError
from lib.formats.checkpoint import save_checkpoint
from lib.model.bert import load_tokenizer
from lib.model.similarity.xdim import XDimSimilarity

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def planted_blocks(sizes, seed=0):
    """W (d, d) with blocks of mutually dependent dimensions under a random permutation, and the blocks."""
    rng = np.random.default_rng(seed)
    d = sum(sizes)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    same = labels[:, None] == labels[None, :]
    W = np.where(same, rng.uniform(0.5, 1.0, (d, d)), rng.uniform(0.0, 0.2, (d, d)))
    permutation = rng.permutation(d)
    W = W[np.ix_(permutation, permutation)]
    labels = labels[permutation]
    return W, [np.flatnonzero(labels == b) for b in range(len(sizes))]


def assert_contiguous(order, blocks):
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    for block in blocks:
        places = np.sort(position[block])
        assert places[-1] - places[0] == len(block) - 1, f"block {block.tolist()} at positions {places.tolist()}"


@pytest.mark.parametrize("sizes, seed", [([5, 8, 3, 8], 0), ([1, 12, 2, 7, 10], 1), ([16, 16, 16, 16], 2)])
def test_dependency_order_puts_each_planted_block_together(sizes, seed):
    W, blocks = planted_blocks(sizes, seed)
    order = analysis.dependency_order(W)
    assert sorted(order.tolist()) == list(range(sum(sizes)))
    assert_contiguous(order, blocks)
    assert np.array_equal(analysis.dependency_order(W), order)  # deterministic


def test_dependency_order_finds_a_block_that_a_random_order_splits():
    # The identity order of a permuted W almost surely splits the blocks: the check can fail.
    W, blocks = planted_blocks([6, 6, 6], seed=3)
    with pytest.raises(AssertionError):
        assert_contiguous(np.arange(18), blocks)
    assert_contiguous(analysis.dependency_order(W), blocks)


# Similarities S = (|W| + |W^T|) / 2 of 6 dimensions, chosen so that average linkage
# builds a tree that single and complete linkage do not:
#   1. {1, 4} (0.9)  2. {0, 5} (0.8)
#   3. 3 joins {0, 5}: mean(0.6, 0.5) = 0.55 beats 2-{0, 5} mean(0.7, 0.1) = 0.4
#      (single linkage would take 2-0 at 0.7 here)
#   4. 2 joins {1, 4}: mean(0.6, 0.05) = 0.325 beats 2-{0, 3, 5} mean(0.7, 0.1, 0.1) = 0.3
#      (complete linkage would take 2-{0, 3, 5} at min 0.1 over min 0.05)
#   5. {0, 3, 5} with {1, 2, 4}.
# scipy numbers clusters 6 = {1, 4}, 7 = {0, 5}, 8 = 3 + 7, 9 = 2 + 6, 10 = 8 + 9 and lays out
# each as its lower-numbered part first: 8 = [3, 0, 5], 9 = [2, 1, 4].
# W holds each S[i, j] in one triangle (twice over, the other entry 0), except that S[0, 5]
# = (1.2 + |-0.4|) / 2; its diagonal, which must not count, is large.
HAND_W = np.array([
    [3.0, 0.2, 1.4, 1.2, 0.2, 1.2],
    [0.0, 3.0, 1.2, 0.2, 1.8, 0.2],
    [0.0, 0.0, 3.0, 0.2, 0.1, 0.2],
    [0.0, 0.0, 0.0, 3.0, 0.2, 1.0],
    [0.0, 0.0, 0.0, 0.0, 3.0, 0.2],
    [-0.4, 0.0, 0.0, 0.0, 0.0, 3.0],
])


def test_dependency_order_is_the_average_linkage_tree_worked_out_by_hand():
    assert analysis.dependency_order(HAND_W).tolist() == [3, 0, 5, 2, 1, 4]
    assert analysis.dependency_order(HAND_W.T).tolist() == [3, 0, 5, 2, 1, 4]  # symmetric in W, W^T


def test_dependency_order_of_one_dimension_and_of_a_non_square_w():
    assert analysis.dependency_order([[0.7]]).tolist() == [0]
    with pytest.raises(ValueError, match=r"W must be square, got shape \(2, 3\)"):
        analysis.dependency_order(np.zeros((2, 3)))


def hide_package(monkeypatch, package):
    """Until the test ends, importing `package` (or any of its modules) raises ImportError."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


@pytest.fixture
def no_scipy(monkeypatch):
    hide_package(monkeypatch, "scipy")


def test_missing_scipy_is_one_line_with_the_install_command(no_scipy):
    with pytest.raises(XDimError) as error:
        analysis.dependency_order(HAND_W)
    assert str(error.value) == analysis.SCIPY_HINT
    assert "pip install scipy" in analysis.SCIPY_HINT and "\n" not in analysis.SCIPY_HINT


def test_dependencies_per_dimension_counts_entries_above_one_half():
    mask = np.array([[0.9, 0.5, 0.51], [0.0, 0.2, 0.4], [1.0, 1.0, 1.0]])
    assert analysis.dependencies_per_dimension(mask).tolist() == [2, 0, 3]


def test_participation_probabilities_rank_the_planted_dimensions_first():
    rng = np.random.default_rng(0)
    d, planted, top_k = 40, [31, 4, 17], 5
    vectors = rng.normal(0.0, 0.1, (200, d))
    vectors[:, planted] += rng.uniform(1.0, 2.0, (200, len(planted)))
    probabilities = analysis.participation_probabilities(vectors, top_k)
    assert probabilities[planted].tolist() == [1.0, 1.0, 1.0]
    assert probabilities.sum() == pytest.approx(top_k)
    assert sorted(analysis.rank_dimensions(probabilities)[:3].tolist()) == sorted(planted)
    assert np.delete(probabilities, planted).max() < 0.5


def test_participation_probabilities_by_hand():
    vectors = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, -1.0, 4.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # Top 2 of each row: {1, 3}, {0, 2}, {0, 1} (the tie 0 / 0 in the last row is not reached).
    assert analysis.participation_probabilities(vectors, 2).tolist() == [2 / 3, 2 / 3, 1 / 3, 1 / 3]
    assert analysis.rank_dimensions([1 / 3, 2 / 3, 2 / 3, 0.0]).tolist() == [1, 2, 0, 3]


def test_shared_top_dimensions():
    shared = analysis.shared_top_dimensions([[1, 2, 3], [3, 4, 5], [2, 3, 9]])
    assert shared.tolist() == [[3, 1, 2], [1, 3, 1], [2, 1, 3]]


def read_png(path):
    from matplotlib.image import imread
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    return imread(path)


def test_every_figure_is_a_valid_png(tmp_path):
    rng = np.random.default_rng(0)
    W, _ = planted_blocks([4, 6, 2])
    order = analysis.dependency_order(W)
    mask = (W > 0.4).astype(float)
    paths = {name: str(tmp_path / f"{name}.png") for name in
             ("W", "mask", "deps", "thresholds", "concept", "overlap", "pair")}
    figures.dependency_heatmap(W, order, paths["W"])
    figures.mask_heatmap(mask, order, paths["mask"], density=mask.mean())
    figures.dependencies_histogram(analysis.dependencies_per_dimension(mask), paths["deps"])
    figures.thresholds_figure(rng.random(12), rng.random(12), 54.6, 14.3, paths["thresholds"])
    figures.concept_profile("dog", rng.random(12), 7, 2, paths["concept"])
    figures.concept_overlap(["dog", "cat"], np.array([[2, 1], [1, 2]]), 2, paths["overlap"])
    figures.pair_attention(["[CLS]", "a", "dog", "[SEP]"], rng.dirichlet(np.ones(6), 4),
                           np.array([0.3, 0.2, 0.6, -0.1]), 0.42, "image 0, caption 0: a dog", paths["pair"])
    for path in paths.values():
        image = read_png(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)


@pytest.fixture
def no_matplotlib(monkeypatch):
    hide_package(monkeypatch, "matplotlib")


def test_missing_matplotlib_is_one_line_with_the_install_command(tmp_path, no_matplotlib):
    with pytest.raises(XDimError) as error:
        figures.dependencies_histogram(np.array([1, 2, 2]), str(tmp_path / "h.png"))
    assert "pip install matplotlib" in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- mask statistics

def hand_mask(E, lam, log_t_mask):
    """The mask and thresholds written out in float64 numpy from the equations."""
    P = 1.0 / (1.0 + np.exp(-E))
    theta = P.mean(axis=1) + lam * P.std(axis=1, ddof=1)
    return np.tanh(np.exp(np.exp(log_t_mask) * (P - theta[:, None]))), theta


def xdim_with(E, lam, log_t_mask, log_t_attn):
    sim = XDimSimilarity(E.shape[0])
    with torch.no_grad():
        sim.E.copy_(torch.as_tensor(E))
        sim.lam.copy_(torch.as_tensor(lam))
        sim.log_t_mask.fill_(log_t_mask)
        sim.log_t_attn.fill_(log_t_attn)
    return sim


def test_statistics_equal_the_equations_by_hand():
    rng = np.random.default_rng(4)
    E, lam = rng.normal(0.0, 2.0, (7, 7)), rng.uniform(0.0, 1.0, 7)
    mask, theta = hand_mask(E, lam, 1.5)
    assert np.abs(mask - 0.5).min() > 1e-3  # no entry so close to 0.5 that float32 could flip it
    assert 0.1 < (mask > 0.5).mean() < 0.9
    stats = xdim_with(E, lam, 1.5, 0.7).statistics()
    assert stats["mask_density"] == (mask > 0.5).sum() / 49
    assert stats["mean_threshold"] == pytest.approx(theta.mean(), rel=1e-6)
    assert stats["t_mask"] == pytest.approx(np.exp(1.5), rel=1e-6)
    assert stats["t_attn"] == pytest.approx(np.exp(0.7), rel=1e-6)


# ---------------------------------------------------------------- analyze.py end to end

D = 32
BLOCKS = [4, 10, 6, 12]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """Our checkpoint (tiny BERT, d = 32) whose logits E plant blocks of mutually dependent
    dimensions under a random permutation: -> (path, model, blocks)."""
    data_path, data_name = tiny_precomp
    torch.manual_seed(0)
    opt = default_options(embed_size=D, img_dim=TINY_IMG_DIM, bert_path=tiny_bert_dir, device="cpu",
                          data_path=data_path, data_name=data_name)
    model = model_from_options(opt)
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.repeat(np.arange(len(BLOCKS)), BLOCKS))
    E = np.where(labels[:, None] == labels[None, :], 6.0, -6.0) + rng.normal(0.0, 0.3, (D, D))
    with torch.no_grad():
        model.sim.E.copy_(torch.from_numpy(E))
        model.sim.lam.fill_(0.5)
    path = str(tmp_path_factory.mktemp("planted") / "model_best.pth")
    save_checkpoint(checkpoint_of(model, opt), path)
    return path, model, [np.flatnonzero(labels == b) for b in range(len(BLOCKS))]


def run_cli(argv, capsys):
    code = analyze_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def whole_word_count(captions, word):
    return sum(len(re.findall(rf"\b{word}\b", caption.lower())) for caption in captions)


@pytest.fixture(scope="module")
def test_captions(tiny_precomp):
    return open_split(*tiny_precomp, "test").captions


def present_and_absent_objects(captions):
    present = [w for w in DEMO_OBJECTS if whole_word_count(captions, w) > 0]
    absent = [w for w in DEMO_OBJECTS if whole_word_count(" ".join(captions).split(), w) == 0]
    return present, absent


def test_analyze_planted_model(planted, tiny_precomp, tiny_bert_dir, test_captions, tmp_path, capsys):
    path, model, blocks = planted
    words = present_and_absent_objects(test_captions)[0][:2]
    out = tmp_path / "analysis"
    code, stdout, _ = run_cli(["--model_path", path, "--out", str(out), "--data_path", tiny_precomp[0],
                               "--data_name", tiny_precomp[1], "--words", *words, "--pair", "3", "7",
                               "--no_progress"], capsys)
    assert code == 0, stdout
    summary = json.loads((out / "summary.json").read_text())
    # The mask keeps exactly the planted blocks: density and per-dimension counts by hand.
    mask, theta = hand_mask(model.sim.E.detach().double().numpy(), 0.5, 4.0)
    assert ((mask > 0.5) == (mask > 0.99)).all()
    assert summary["mask"]["mask_density"] == sum(s * s for s in BLOCKS) / D ** 2 == (mask > 0.5).mean()
    size_of = {int(j): len(block) for block in blocks for j in block}
    assert summary["mask"]["dependencies_per_dimension"]["values"] == [size_of[j] for j in range(D)]
    assert summary["mask"]["theta"] == pytest.approx(theta.tolist(), rel=1e-9)
    assert_contiguous(np.array(summary["mask"]["dimension_order"]), blocks)
    # Concepts: occurrences counted by hand; top_k defaults to 5% of d.
    assert summary["top_k"] == 2
    for word in words:
        concept = summary["concepts"][word]
        assert concept["occurrences"] == whole_word_count(test_captions, word)
        probabilities = [t["probability"] for t in concept["top_dimensions"]]
        assert len(probabilities) == 2 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < probabilities[0] <= 1
    tops = [{t["dimension"] for t in summary["concepts"][w]["top_dimensions"]} for w in words]
    assert summary["concept_overlap"]["shared"] == [[2, len(tops[0] & tops[1])], [len(tops[0] & tops[1]), 2]]
    # The pair: the reference's score equals the fast kernel's; tokens as the tokenizer gives them.
    pair = summary["pair"]
    tokenizer = load_tokenizer(tiny_bert_dir)
    ids = tokenizer(test_captions[7])["input_ids"]
    assert pair["tokens"] == tokenizer.convert_ids_to_tokens(ids)
    split = open_split(*tiny_precomp, "test")
    model.val_start()
    with torch.no_grad():
        img_emb, cap_emb, lens = model.forward_emb(torch.from_numpy(np.array(split.images[3:4])),
                                                   torch.tensor([ids]), [len(ids)])
        kernel = model.forward_sim(img_emb, cap_emb, lens).item()
    assert pair["score"] == pytest.approx(kernel, rel=1e-5)
    assert np.mean(pair["word_scores"]) == pytest.approx(pair["score"], rel=1e-6)
    assert sum(pair["shares"]) == pytest.approx(1.0)
    # Every figure listed exists and is a valid PNG.
    assert sorted(summary["figures"]) == sorted(
        ["dependency_weights.png", "mask.png", "dependencies_per_dimension.png", "thresholds.png",
         "concept_overlap.png", "pair_3_7.png"] + [f"concept_{w}.png" for w in words])
    for name in summary["figures"]:
        assert read_png(out / name).ndim == 3
    assert f"'{words[0]}': {summary['concepts'][words[0]]['occurrences']} occurrences" in stdout


def test_analyze_official_checkpoint_offline(tiny_bert_dir, tiny_precomp, test_captions, tmp_path, capsys):
    parts = official_parts(tiny_bert_dir, d=D, img_dim=TINY_IMG_DIM)
    path = write_official_checkpoint(str(tmp_path / "official.pth"), parts, official_opt(d=D, img_dim=TINY_IMG_DIM))
    word = present_and_absent_objects(test_captions)[0][0]
    code, stdout, err = run_cli(["--model_path", path, "--out", str(tmp_path / "out"), "--bert_path", tiny_bert_dir,
                                 "--data_path", tiny_precomp[0], "--data_name", tiny_precomp[1], "--words", word,
                                 "--top_k", "4", "--pair", "0", "0", "--no_progress"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    similarity = parts[2]
    mask, theta = hand_mask(similarity["weights.weight"].double().numpy(), similarity["sim_map.weight"][0].double().numpy(),
                            float(similarity["temp_learnable.weight"]))
    assert summary["mask"]["mask_density"] == pytest.approx((mask > 0.5).mean(), abs=0.5 / D ** 2)
    assert summary["mask"]["t_attn"] == pytest.approx(np.exp(float(similarity["temp_scale.weight"])), rel=1e-6)
    assert summary["concepts"][word]["occurrences"] == whole_word_count(test_captions, word)
    assert len(summary["concepts"][word]["top_dimensions"]) == 4


@pytest.mark.parametrize("args, message", [
    (["--words", "zzzq"], "--words 'zzzq': not in the BERT vocabulary"),
    (["--words", "two dogs"], "--words 'two dogs': give single words"),
    (["--words", "ABSENT"], "--words 'ABSENT': the word does not occur in "),
    (["--pair", "10", "0"], "--pair 10 0: image 10 is out of range"),
    (["--pair", "0", "-1"], "--pair 0 -1: caption -1 is out of range"),
    (["--words", "a", "--top_k", "33"], "--top_k 33: must be between 1 and the embedding size 32"),
])
def test_bad_input_is_one_line(planted, tiny_precomp, test_captions, tmp_path, capsys, args, message):
    absent = present_and_absent_objects(test_captions)[1][0]
    args = [absent if a == "ABSENT" else a for a in args]
    message = message.replace("ABSENT", absent)
    code, _, err = run_cli(["--model_path", planted[0], "--out", str(tmp_path / "out"), "--data_path", tiny_precomp[0],
                            "--data_name", tiny_precomp[1], "--no_progress", *args], capsys)
    assert code == 2
    assert err.startswith("error: " + message) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()  # checked before any work


@pytest.mark.parametrize("sim", ["cosine", "xdim_nomask", "xdim_nodelta"])
def test_variants_with_other_equations_are_refused(tiny_bert_dir, tmp_path, capsys, sim):
    opt = default_options(embed_size=D, img_dim=TINY_IMG_DIM, bert_path=tiny_bert_dir, device="cpu", sim=sim)
    path = str(tmp_path / "variant.pth")
    save_checkpoint(checkpoint_of(model_from_options(opt), opt), path)
    capsys.readouterr()
    code, _, err = run_cli(["--model_path", path, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith(f"error: this checkpoint's similarity is '{sim}'") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_missing_matplotlib_stops_analyze_before_writing(planted, tmp_path, capsys, no_matplotlib):
    code, _, err = run_cli(["--model_path", planted[0], "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err == f"error: {figures.MATPLOTLIB_HINT}\n"
    assert "pip install matplotlib" in err and not (tmp_path / "out").exists()


def test_missing_scipy_stops_analyze_before_writing(planted, tmp_path, capsys, no_scipy):
    code, _, err = run_cli(["--model_path", planted[0], "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err == f"error: {analysis.SCIPY_HINT}\n"
    assert "pip install scipy" in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- concepts from embeddings

class PlantedEmbeddings:
    """Stands in for XDimModel in the concept analysis: fixed random token embeddings, except
    that one word's token and every image region are strongest on the planted dimensions."""

    def __init__(self, tokenizer, word, planted, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.functional.normalize(torch.randn(len(tokenizer), D, generator=gen), dim=1)
        row = 0.1 * torch.randn(D, generator=gen)
        row[planted] = 1.0
        self.table[tokenizer.convert_tokens_to_ids(word)] = row / row.norm()
        self.projection = 0.02 * torch.randn(TINY_IMG_DIM, D, generator=gen)
        self.planted = planted
        self.sim = XDimSimilarity(D)
        self.config = SimpleNamespace(embed_size=D)
        self.device = torch.device("cpu")

    def val_start(self):
        pass

    def encode_captions(self, captions, lengths):
        return self.table[captions]

    def encode_images(self, images):
        regions = images @ self.projection
        regions[..., self.planted] += 1.0
        return torch.nn.functional.normalize(regions, dim=-1)


def test_concept_statistics_rank_the_planted_dimensions_first(tiny_precomp, tiny_bert_dir, test_captions):
    word = present_and_absent_objects(test_captions)[0][0]
    planted = [29, 3, 12]
    tokenizer = load_tokenizer(tiny_bert_dir)
    model = PlantedEmbeddings(tokenizer, word, planted)
    split = open_split(*tiny_precomp, "test")
    encoder = CaptionEncoder(tokenizer, 64)
    found = analysis.occurrences_in_split(encoder, split, [word], progress=False)
    result = analysis.concept_statistics(model, split, encoder, found, top_k=3, progress=False)[word]
    assert result["occurrences"] == whole_word_count(test_captions, word) > 1
    expected = np.zeros(D)
    expected[planted] = 1.0
    assert result["probabilities"].tolist() == expected.tolist()
    assert sorted(analysis.rank_dimensions(result["probabilities"])[:3].tolist()) == sorted(planted)

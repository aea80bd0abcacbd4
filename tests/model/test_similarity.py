"""lib/model/similarity: the registry, the block scheduler and every variant."""
import os
import re
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import (
    ROOT,
    _reference_scores,
    checkpoint_of,
    model_from_options,
    official_opt,
    official_parts,
    random_inputs,
    relative_error,
    save_v1_checkpoint,
    tiny_batch,
    tiny_opt,
    trainer_for,
    write_official_checkpoint,
)

import eval as eval_cli
from lib.analysis.statistics import check_xdim_equations
from lib.cli.train import get_argument_parser, train_configs
from lib.errors import XDimError
from lib.formats.checkpoint import load_checkpoint, save_checkpoint
from lib.model.similarity import (
    SIMILARITIES,
    Similarity,
    SimilarityEntry,
    ablation_variants,
    build_similarity,
    similarity_entry,
    similarity_help,
    xdim_equation_similarities,
)
from lib.model.similarity.blocks import plan, score_padded
from lib.model.similarity.cosine import CosineSimilarity
from lib.model.similarity.transcription import xdim_scores as reference_scores
from lib.model.similarity.xdim import XDimSimilarity
from lib.model.xdim_model import XDimModel
from lib.training import trainer as training
from lib.training.ablation import DEFAULT_VARIANTS


def documented_example():
    """docs/similarity.md's section "Adding a similarity": -> (its module, run; its registry name; its
    registry entry, the page's expression evaluated with the module's names and SimilarityEntry)."""
    page = open(os.path.join(ROOT, "docs", "similarity.md"), encoding="utf-8").read()
    section = page.split("## Adding a similarity", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    name, expression = re.search(r'^\s*"(\w+)": (.+),$', section, re.M).groups()
    module = types.ModuleType("documented_example")
    exec(compile(code, "docs/similarity.md", "exec"), module.__dict__)
    return module, name, eval(expression, {**vars(module), "SimilarityEntry": SimilarityEntry})


class MeanCosine(Similarity):
    """Registered by a test at run time: the cosine of the mean real region and the mean real
    word, times a learned scale. Nothing else in the code base knows it."""

    def __init__(self, embed_size):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(0.5))

    def score(self, img, cap, cap_lens, img_lens, prepared):
        regions = torch.ones(img.shape[:2], dtype=img.dtype, device=img.device)
        if img_lens is not None:
            regions = (torch.arange(img.shape[1], device=img.device) < img_lens[:, None]).to(img.dtype)
        words = (torch.arange(cap.shape[1], device=cap.device) < cap_lens[:, None]).to(cap.dtype)
        image = nn.functional.normalize((img * regions[..., None]).sum(1), dim=-1)  # (b, d)
        caption = nn.functional.normalize((cap * words[..., None]).sum(1), dim=-1)  # (n, d)
        return self.log_scale.exp() * image @ caption.T


def mean_cosine_reference(sim, img, cap, cap_lens):
    img, cap = img.double().numpy(), cap.double().numpy()
    scale = np.exp(float(sim.log_scale.detach()))
    unit = lambda x: x / np.linalg.norm(x)
    return np.array([[scale * unit(img[i].sum(0)) @ unit(cap[c, :cap_lens[c]].sum(0)) for c in range(len(cap))]
                     for i in range(len(img))])


def runtime_entry():
    return "mean_cosine", SimilarityEntry(MeanCosine, "a test's variant: cosine of mean region and mean word",
                                          in_ablation=False, reference=mean_cosine_reference)


# Every registry entry, the worked example of docs/similarity.md and a variant registered at run
# time go through the same checks: a new entry needs no edit here.
ADDED = {"documented_example": lambda: documented_example()[1:], "runtime_entry": runtime_entry}
ENTRIES = list(SIMILARITIES) + list(ADDED)
WITH_REFERENCE = [name for name in SIMILARITIES if SIMILARITIES[name].reference is not None] + list(ADDED)


@pytest.fixture
def entry_name(request, monkeypatch):
    """The registry name of the parametrized entry, registered first when a test adds it."""
    if request.param not in ADDED:
        return request.param
    name, entry = ADDED[request.param]()
    monkeypatch.setitem(SIMILARITIES, name, entry)
    return name


@pytest.mark.parametrize("entry_name", ENTRIES, indirect=True)
def test_entry_contract_shapes_and_padding(entry_name):
    entry = similarity_entry(entry_name)
    torch.manual_seed(0)
    sim = build_similarity(entry_name, 12)
    assert isinstance(sim, Similarity) and type(sim) is entry.cls
    img, cap, lens = random_inputs(12, n_img=3, n_cap=5, regions=6, seed=4)
    with torch.no_grad():
        scores = sim(img, cap, lens)
        assert scores.shape == (3, 5) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
        # A caption's scores depend neither on the other captions nor on its padding, nor on the block size.
        for c in range(5):
            alone = sim(img, cap[c:c + 1, :lens[c]], lens[c:c + 1])
            assert torch.allclose(alone[:, 0], scores[:, c], atol=1e-5), c
        assert torch.allclose(sim(img, cap, lens, rows_per_block=7), scores, atol=1e-5)
        # Masked regions take no part, whatever they hold.
        padded = img.clone()
        padded[0, 4:] = 5.0
        masked = sim(padded, cap, lens, torch.tensor([4, 6, 6]))
        assert torch.allclose(masked[0], sim(img[:1, :4], cap, lens)[0], atol=1e-5)


@pytest.mark.parametrize("entry_name", ENTRIES, indirect=True)
def test_entry_gradients_reach_every_learned_parameter(entry_name):
    torch.manual_seed(0)
    sim = build_similarity(entry_name, 12)
    img, cap, lens = random_inputs(12, n_img=3, n_cap=4, seed=6)
    sim(img, cap, lens).square().sum().backward()
    for key, parameter in sim.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), key
            assert parameter.grad.abs().max() > 0, key
        else:
            assert parameter.grad is None, key


@pytest.mark.parametrize("entry_name", WITH_REFERENCE, indirect=True)
def test_entry_matches_its_float64_reference(entry_name):
    torch.manual_seed(7)
    sim = build_similarity(entry_name, 33).double()
    img, cap, lens = random_inputs(33, n_img=4, n_cap=6, seed=2)
    img, cap = img.double(), cap.double()
    expected = similarity_entry(entry_name).reference(sim, img, cap, lens)
    with torch.no_grad():
        float64 = sim(img, cap, lens, rows_per_block=20).numpy()
        float32 = sim.float()(img.float(), cap.float(), lens, rows_per_block=20).numpy()
    assert relative_error(float64, expected) <= 1e-12
    assert relative_error(float32, expected) <= 1e-5


@pytest.mark.parametrize("entry_name", ENTRIES, indirect=True)
def test_entry_traits_drive_help_analysis_and_ablation(entry_name):
    entry = similarity_entry(entry_name)
    parser = get_argument_parser()
    assert parser.parse_args(["--sim", entry_name]).sim == entry_name
    assert re.search(rf"^  {entry_name} +{re.escape(entry.help)}$", parser.format_help(), re.M)
    assert (entry_name in ablation_variants()) == entry.in_ablation
    assert (entry_name in xdim_equation_similarities()) == entry.xdim_equations
    if entry.xdim_equations:
        check_xdim_equations(entry_name)
    else:
        with pytest.raises(XDimError, match=f"similarity is '{entry_name}', whose equations differ"):
            check_xdim_equations(entry_name)


def test_every_variant_is_a_sim_choice_with_its_help_line(capsys):
    parser = get_argument_parser()
    assert parser.parse_args([]).sim == "xdim"
    assert parser.parse_args(["--sim", "xdim_nomask"]).sim == "xdim_nomask"
    help_text = parser.format_help()
    for name, entry in SIMILARITIES.items():
        assert re.search(rf"^  {name} +{re.escape(entry.help)}$", help_text, re.M), name
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--sim", "xdimm"])
    assert info.value.code == 2 and "invalid choice: 'xdimm'" in capsys.readouterr().err


def test_unknown_name_in_library_use_is_one_line():
    with pytest.raises(XDimError) as info:
        build_similarity("bogus", 8)
    assert str(info.value) == f"--sim: unknown similarity 'bogus' (known: {', '.join(SIMILARITIES)})"
    assert "xdim, reference, cosine, xdim_nomask, xdim_fixed_threshold, xdim_nodelta" in str(info.value)


def test_the_traits_of_the_built_in_entries():
    built_in = ["xdim", "reference", "cosine", "xdim_nomask", "xdim_fixed_threshold", "xdim_nodelta"]
    assert [n for n in xdim_equation_similarities() if n in built_in] == ["xdim", "reference", "xdim_fixed_threshold"]
    assert [n for n in ablation_variants() if n in built_in] == [
        "xdim", "cosine", "xdim_nomask", "xdim_fixed_threshold", "xdim_nodelta"]
    assert list(DEFAULT_VARIANTS) == ablation_variants()  # ablate.py's default is the registry's


def test_a_new_entry_s_traits_drive_help_analysis_and_ablation(monkeypatch):
    monkeypatch.setitem(SIMILARITIES, "drawn_only", SimilarityEntry(
        XDimSimilarity, "a test entry that analyze.py draws", xdim_equations=True, in_ablation=False))
    monkeypatch.setitem(SIMILARITIES, "zz_ablation_only", SimilarityEntry(XDimSimilarity, "not X-Dim's equations"))
    help_text = get_argument_parser().format_help()
    assert re.search(r"^  drawn_only +a test entry that analyze.py draws$", help_text, re.M)
    assert re.search(r"^  zz_ablation_only +not X-Dim's equations$", help_text, re.M)
    check_xdim_equations("drawn_only")  # accepted: its trait, though it is not a built-in name
    with pytest.raises(XDimError) as info:
        check_xdim_equations("zz_ablation_only")  # refused by its trait, though its class is X-Dim's
    assert str(info.value) == ("this checkpoint's similarity is 'zz_ablation_only', whose equations differ from "
                               "X-Dim's; analyze.py draws the X-Dim equations of xdim, reference, "
                               "xdim_fixed_threshold, drawn_only checkpoints")
    assert ablation_variants()[-1] == "zz_ablation_only" and "drawn_only" not in ablation_variants()


def test_a_plain_pair_is_an_entry_with_the_default_traits(monkeypatch):
    monkeypatch.setitem(SIMILARITIES, "pair", (CosineSimilarity, "given as (class, help)"))
    assert similarity_entry("pair") == SimilarityEntry(CosineSimilarity, "given as (class, help)",
                                                       xdim_equations=False, in_ablation=True, reference=None)
    assert type(build_similarity("pair", 8)) is CosineSimilarity
    assert re.search(r"\n  pair +given as \(class, help\)$", similarity_help())
    assert "pair" in ablation_variants() and "pair" not in xdim_equation_similarities()


class Recorder(Similarity):
    """Scores pair (i, c) as 1000 * i + c, read from img[i, 0, 0] = i and cap[c, 0, 0] = c,
    and records every call."""

    block_cost = 1.0

    def __init__(self):
        super().__init__()
        self.calls, self.prepared, self.caption_runs = [], 0, 0

    def prepare(self):
        self.prepared += 1
        return "weights"

    def prepare_captions(self, cap, cap_lens, prepared):
        assert prepared == "weights"
        self.caption_runs += 1
        return ("run", self.caption_runs)

    def score(self, img, cap, cap_lens, img_lens, prepared):
        assert prepared == ("run", self.caption_runs)
        self.calls.append((img[:, 0, 0].long().tolist(), cap[:, 0, 0].long().tolist(),
                           cap_lens.tolist(), cap.shape[1]))
        return 1000 * img[:, 0, 0, None] + cap[None, :, 0, 0]


def labelled_inputs(n_img, lens):
    img = torch.zeros(n_img, 3, 4)
    img[:, 0, 0] = torch.arange(n_img)
    cap = torch.zeros(len(lens), max(lens), 4)
    cap[:, 0, 0] = torch.arange(len(lens))
    return img, cap, torch.tensor(lens)


@pytest.mark.parametrize("rows", [1, 3, 7, 20, 64, 10 ** 6])
def test_scheduler_scores_every_pair_exactly_once(rows):
    lens = [5, 1, 9, 3, 3, 12, 2, 7, 4]  # 12 > several budgets: such a caption gets a run of its own
    img, cap, cap_lens = labelled_inputs(6, lens)
    sim = Recorder()
    scores = sim(img, cap, cap_lens, rows_per_block=rows)
    expected = 1000 * torch.arange(6.0)[:, None] + torch.arange(9.0)[None, :]
    assert torch.equal(scores, expected)
    pairs = [(i, c) for images, captions, _, _ in sim.calls for i in images for c in captions]
    assert sorted(pairs) == [(i, c) for i in range(6) for c in range(9)]
    assert sim.prepared == 1 and sim.caption_runs == len({tuple(c) for _, c, _, _ in sim.calls})
    for images, captions, block_lens, padded_to in sim.calls:
        assert block_lens == [lens[c] for c in captions] == sorted(block_lens)
        assert padded_to == max(block_lens)  # each run padded to its own longest caption only
        if len(images) > 1 or len(captions) > 1:
            assert len(images) * sum(block_lens) <= rows


def test_block_cost_divides_the_budget():
    img, cap, cap_lens = labelled_inputs(8, [2] * 8)
    cheap, costly = Recorder(), Recorder()
    costly.block_cost = 4
    cheap(img, cap, cap_lens, rows_per_block=32)
    costly(img, cap, cap_lens, rows_per_block=32)
    assert max(len(i) * sum(lens) for i, _, lens, _ in cheap.calls) == 32
    assert max(len(i) * sum(lens) for i, _, lens, _ in costly.calls) == 8


def test_scheduler_edge_cases():
    img, cap, cap_lens = labelled_inputs(3, [2, 4])
    assert score_padded(Recorder(), img, cap[:0], cap_lens[:0]).shape == (3, 0)
    assert score_padded(Recorder(), img[:0], cap, cap_lens).shape == (0, 2)
    assert plan(cap_lens, n_img=0, rows=100) == [] and plan(cap_lens[:0], n_img=3, rows=100) == []
    runs = plan(torch.tensor([3, 1, 2]), n_img=5, rows=100)
    assert len(runs) == 1 and runs[0].columns.tolist() == [1, 2, 0] and runs[0].images == [(0, 5)]


def test_built_in_entries_name_the_transcription_of_their_equation():
    switches = {"xdim": {}, "reference": {}, "xdim_fixed_threshold": {}, "xdim_nomask": {"masked": False},
                "xdim_nodelta": {"weighted": False}, "cosine": {"word_score": "cosine"}}
    img, cap, lens = random_inputs(9, n_img=2, n_cap=3, seed=1)
    for name, switch in switches.items():
        torch.manual_seed(3)
        sim = build_similarity(name, 9)
        expected = reference_scores(sim, img, cap, lens, **switch)
        assert np.array_equal(similarity_entry(name).reference(sim, img, cap, lens), expected), name


def test_variants_really_change_the_scores():
    img, cap, lens = random_inputs(16, seed=3)
    scores = {}
    for name in SIMILARITIES:
        torch.manual_seed(0)  # the same E, lam, t_mask, t_attn where a variant has them
        with torch.no_grad():
            scores[name] = build_similarity(name, 16)(img, cap, lens)
    assert torch.allclose(scores["reference"], scores["xdim"], atol=1e-5)
    assert torch.equal(scores["xdim_fixed_threshold"], scores["xdim"])  # same equations, other learning
    for name in ("cosine", "xdim_nomask", "xdim_nodelta"):
        assert (scores[name] - scores["xdim"]).abs().max() > 1e-2, name


@pytest.mark.parametrize("name", ["xdim_fixed_threshold", "xdim_nomask"])
def test_frozen_parameters_stay_out_of_training_and_in_checkpoints(name, tiny_bert_dir, tmp_path):
    opt = tiny_opt(tiny_bert_dir, sim=name)
    model = model_from_options(opt)
    trainer = trainer_for(model, opt)
    frozen = {"lam": model.sim.lam.detach().clone(), "log_t_mask": model.sim.log_t_mask.detach().clone()}
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(model.sim.E) in trained and id(model.sim.lam) not in trained
    assert id(model.sim.log_t_mask) not in trained
    E = model.sim.E.detach().clone()
    model.train()
    trainer.train_step(*tiny_batch())
    assert not torch.equal(model.sim.E, E)
    for key, value in frozen.items():
        assert torch.equal(getattr(model.sim, key), value), key
    path = str(tmp_path / "frozen.pth")
    save_checkpoint(checkpoint_of(model), path)
    loaded = XDimModel.from_checkpoint(path, device="cpu")
    assert torch.equal(loaded.sim.lam, frozen["lam"]) and not loaded.sim.lam.requires_grad


@pytest.mark.parametrize("name", list(SIMILARITIES))
def test_masked_regions_take_no_part_in_every_variant(name):
    img, cap, lens = random_inputs(12, n_img=2, n_cap=3, regions=6, seed=4)
    padded = img.clone()
    padded[0, 4:] = 5.0
    sim = build_similarity(name, 12)
    with torch.no_grad():
        masked = sim(padded, cap, lens, torch.tensor([4, 6]))
        assert torch.allclose(masked[0], sim(img[:1, :4], cap, lens)[0], atol=1e-6), name


def eval_scores(path, tiny_precomp, tmp_path, capsys):
    """eval.py on the tiny test split: -> (exit code, saved scores or None, stderr)."""
    data_path, data_name = tiny_precomp
    sims = tmp_path / f"{os.path.basename(path)}.npy"
    capsys.readouterr()  # drop what building models printed before
    code = eval_cli.main(["--model_path", path, "--data_path", data_path, "--data_name", data_name,
                          "--split", "test", "--device", "cpu", "--workers", "0", "--no_progress",
                          "--save_sims", str(sims)])
    err = capsys.readouterr().err
    return code, (np.load(sims) if code == 0 else None), err


@pytest.mark.parametrize("entry_name", ENTRIES, indirect=True)
def test_variant_trains_round_trips_and_evaluates(entry_name, tiny_bert_dir, tiny_precomp, tmp_path, capsys):
    name = entry_name
    torch.manual_seed(0)
    opt = tiny_opt(tiny_bert_dir, sim=name, data_path=tiny_precomp[0], data_name=tiny_precomp[1])
    model = model_from_options(opt)
    assert type(model.sim) is similarity_entry(name).cls
    learned = {key: p.detach().clone() for key, p in model.sim.named_parameters() if p.requires_grad}
    model.train()
    loss = trainer_for(model, opt).train_step(*tiny_batch())
    assert np.isfinite(loss)
    for key, before in learned.items():
        assert not torch.equal(getattr(model.sim, key), before), key
    path = str(tmp_path / f"{name}.pth")
    save_checkpoint(checkpoint_of(model, opt), path)
    assert load_checkpoint(path)["model_config"]["sim"] == name
    loaded = XDimModel.from_checkpoint(path, device="cpu")
    assert type(loaded.sim) is similarity_entry(name).cls and loaded.config.sim == name
    code, sims, err = eval_scores(path, tiny_precomp, tmp_path, capsys)
    assert code == 0, err
    from lib.data.precomp import open_split
    from lib.model.bert import load_tokenizer
    split = open_split(*tiny_precomp, "test")
    expected = _reference_scores(model, load_tokenizer(tiny_bert_dir), split)  # one unblocked call
    np.testing.assert_allclose(sims, expected, rtol=1e-5, atol=1e-5)


def test_checkpoints_without_a_variant_name_load_as_xdim(tiny_bert_dir, tmp_path):
    opt = tiny_opt(tiny_bert_dir)
    old = save_v1_checkpoint(model_from_options(opt), opt, str(tmp_path / "old.pth"), sim=None)  # as saved before --sim existed
    loaded = XDimModel.from_checkpoint(old, device="cpu")
    assert type(loaded.sim) is XDimSimilarity and loaded.config.sim == "xdim"
    official = write_official_checkpoint(str(tmp_path / "official.pth"),
                                         official_parts(tiny_bert_dir, d=16, img_dim=32), official_opt(16, 32))
    loaded = XDimModel.from_checkpoint(official, bert_path=tiny_bert_dir, device="cpu")
    assert type(loaded.sim) is XDimSimilarity and loaded.config.sim == "xdim"


def test_checkpoint_naming_an_unknown_variant_fails_in_one_line(tiny_bert_dir, tiny_precomp, tmp_path, capsys):
    state = checkpoint_of(model_from_options(tiny_opt(tiny_bert_dir)))
    state["model_config"]["sim"] = "xdim_from_the_future"
    path = str(tmp_path / "future.pth")
    save_checkpoint(state, path)
    with pytest.raises(XDimError, match=re.escape(f"{path} (stored similarity): unknown similarity "
                                                  "'xdim_from_the_future' (known: xdim, ")):
        XDimModel.from_checkpoint(path, device="cpu")
    code, _, err = eval_scores(path, tiny_precomp, tmp_path, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "xdim_from_the_future" in err


def test_resume_refuses_another_variant(tiny_bert_dir, tmp_path):
    model = model_from_options(tiny_opt(tiny_bert_dir))
    path = str(tmp_path / "xdim.pth")
    save_checkpoint(checkpoint_of(model), path)
    opt = tiny_opt(tiny_bert_dir, sim="xdim_nomask", resume=path)
    with pytest.raises(XDimError, match="trained with --sim xdim, not --sim xdim_nomask"):
        training.read_resume(train_configs(opt)[1], "xdim_nomask")
    opt = tiny_opt(tiny_bert_dir, sim="xdim_nomask", resume=path, reset_start_epoch=True)
    nomask = model_from_options(opt)  # weights only: an xdim start for the ablation is allowed
    trainer = trainer_for(nomask, opt)
    trainer.logger = training.setup_text_log(str(tmp_path / "log"), enabled=False)
    assert trainer.resume(training.read_resume(train_configs(opt)[1], "xdim_nomask")) == 0
    assert trainer.best_rsum == 0.0 and trainer.iterations == 0
    assert torch.equal(nomask.sim.E, model.sim.E)


def test_documented_example_variant_trains_and_evaluates(tiny_bert_dir, tiny_precomp, tmp_path, capsys,
                                                     monkeypatch):
    module, name, entry = documented_example()
    monkeypatch.setitem(SIMILARITIES, name, entry)
    # As the page says: in --help and in ablate.py's variants, not drawn by analyze.py.
    assert similarity_entry(name).cls is module.BestRegion
    assert re.search(rf"^  {name} +no attention: ", similarity_help(), re.M)
    assert name in ablation_variants() and name not in xdim_equation_similarities()
    # Its equation: each word's best weighted dot product with a region, mean over words.
    sim = build_similarity(name, 8)
    img, cap, lens = random_inputs(8, seed=5)
    with torch.no_grad():
        ours = sim(img, cap, lens, rows_per_block=9).numpy()
    expected = np.array([[(cap[c, :lens[c]].double() @ img[i].double().T).max(1).values.mean().item()
                          for c in range(len(lens))] for i in range(len(img))])
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    # Trained, saved with its name, rebuilt and evaluated by eval.py.
    opt = tiny_opt(tiny_bert_dir, sim=name)
    model = model_from_options(opt)
    model.train()
    assert np.isfinite(trainer_for(model, opt).train_step(*tiny_batch()))
    path = str(tmp_path / "example.pth")
    save_checkpoint(checkpoint_of(model), path)
    code, sims, err = eval_scores(path, tiny_precomp, tmp_path, capsys)
    assert code == 0, err
    assert sims.shape == (10, 50) and np.isfinite(sims).all()

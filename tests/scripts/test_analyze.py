"""analyze.py: the planted model, official checkpoints and its refusals."""
import json
import os

import numpy as np
import pytest
import torch
from helpers import (
    BLOCKS,
    TINY_IMG_DIM,
    D,
    assert_contiguous,
    checkpoint_of,
    folder_state,
    hand_mask,
    model_from_options,
    official_opt,
    official_parts,
    one_error_line,
    present_and_absent_objects,
    read_png,
    run_main,
    whole_word_count,
    write_official_checkpoint,
)

import analyze
import analyze as analyze_cli
import convert_features
from lib.analysis import figures
from lib.analysis import statistics as analysis
from lib.cli.train import default_options
from lib.data.precomp import open_split
from lib.formats.checkpoint import save_checkpoint
from lib.model.bert import load_tokenizer


def run_cli(argv, capsys):
    code = analyze_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


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


def test_out_naming_a_file_is_refused_by_the_converter_and_analyze(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a thesis", encoding="utf-8")
    assert convert_features.main(["--npz_dir", str(tmp_path), "--out", str(taken), "--split", "s"]) == 2
    assert capsys.readouterr().err == f"error: --out {taken}: {taken} is a file, not a folder\n"
    # analyze.py checks --out before it loads the (here missing) checkpoint.
    assert analyze.main(["--model_path", str(tmp_path / "none.pth"), "--out", str(taken / "figures")]) == 2
    assert capsys.readouterr().err == f"error: --out {taken / 'figures'}: {taken} is a file, not a folder\n"
    assert taken.read_text(encoding="utf-8") == "a thesis"


def test_analyze_rerun_replaces_the_report_whole_and_refuses_a_folder_of_other_files(gallery, tiny_precomp,
                                                                                      tmp_path):
    data_path, data_name = tiny_precomp
    out = tmp_path / "analysis"
    common = ["--model_path", gallery["path"], "--out", str(out), "--device", "cpu", "--no_progress"]
    first = run_main(analyze_cli.main, common + ["--data_path", data_path, "--data_name", data_name,
                                                 "--words", "bag", "cat", "--pair", "0", "0"])
    assert {"concept_bag.png", "concept_overlap.png", "pair_0_0.png"} <= set(os.listdir(out)), first.out
    run_main(analyze_cli.main, common)
    listed = json.load(open(out / "summary.json"))["figures"]
    assert sorted(os.listdir(out)) == sorted(listed + ["summary.json"]) and "concept_bag.png" not in listed
    assert sorted(os.listdir(tmp_path)) == ["analysis"]  # no staging folder, no lock left
    (out / "my_notes.txt").write_text("not a figure", encoding="utf-8")
    before = folder_state(out)
    message = one_error_line(run_main(analyze_cli.main, common, expect=2))
    assert message == (f"--out {out}: holds my_notes.txt, not part of a report of analyze.py; the report "
                       f"replaces the folder whole, so give a new or empty folder (nothing was changed)")
    assert folder_state(out) == before

"""What the scripts write never damages what the user has: an output naming one of the command's own
inputs is refused before any work, /dev/stdout reaches the terminal or pipe, a converted split or an
analysis report is replaced whole, two analyze.py runs never share one --out."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import (
    TINY_IMG_DIM,
    _checkpoint,
    dead_pid,
    folder_state,
    one_error_line,
    run_command,
    run_main,
    write_tsv,
)

import analyze
import convert_features
import eval as eval_cli
import retrieve
from lib.data.check import inspect_split
from lib.retrieval.index import load_gallery_images


@pytest.fixture
def run_folder(tmp_path, tiny_bert_dir, tiny_precomp):
    """A private copy of the tiny data set and an untrained tiny checkpoint."""
    source_path, data_name = tiny_precomp
    data_path = tmp_path / "data"
    shutil.copytree(os.path.join(source_path, data_name), data_path / data_name)
    model, _ = _checkpoint(tmp_path, tiny_bert_dir, tiny_precomp, seed=0)
    return {"folder": tmp_path, "data_path": str(data_path), "data_name": data_name, "model": model,
            "split": data_path / data_name, "bert": tiny_bert_dir, "data": tiny_precomp}


def file_bytes(*paths):
    return {str(path): open(path, "rb").read() for path in paths}


def evaluate(run_folder, *extra):
    return run_main(eval_cli.main, ["--model_path", run_folder["model"], "--data_path", run_folder["data_path"],
                                    "--data_name", run_folder["data_name"], "--split", "test", "--device", "cpu",
                                    "--no_progress", *extra], expect=None)


# ---------------------------------------------------------------- 2. outputs that name inputs

@pytest.mark.parametrize("option, input_name", [("--json", "--model_path"), ("--save_sims", "--split images"),
                                                 ("--json", "--split captions")])
def test_eval_refuses_an_output_that_is_one_of_its_inputs(run_folder, option, input_name):
    split = run_folder["split"]
    inputs = {"--model_path": run_folder["model"], "--split images": split / "test_ims.npy",
              "--split captions": split / "test_caps.txt"}
    before = file_bytes(*inputs.values())
    message = one_error_line(evaluate(run_folder, option, str(inputs[input_name])))
    shown = input_name.split()[0]
    assert message.startswith(f"{option} {inputs[input_name]}: is the same file as {shown} ")
    assert message.endswith(", an input of this command, which writing would replace; give another file "
                            "(nothing was changed)")
    assert file_bytes(*inputs.values()) == before


PRIVATE_DEV = ("mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && mknod -m 666 /dev/zero c 1 5 "
               "&& mknod -m 666 /dev/random c 1 8 && mknod -m 666 /dev/urandom c 1 9 && mkdir /dev/shm "
               "&& ln -s /proc/self/fd /dev/fd && ln -s /proc/self/fd/1 /dev/stdout "
               "&& ln -s /proc/self/fd/2 /dev/stderr && exec \"$@\"")


def with_private_dev(args):
    """`args` as a command whose /dev/stdout cannot be damaged: as root, run in a private mount namespace
    whose /dev is a fresh tmpfs holding the few devices Python needs (code that replaces /dev/stdout replaces
    only that copy); as another user, as it is (/dev is not writable then)."""
    if os.geteuid() != 0:
        return args
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without a private mount namespace: /dev/stdout itself would be at stake")
    return ["unshare", "-m", "sh", "-c", PRIVATE_DEV, "private-dev", *args]


def test_eval_json_to_dev_stdout_reaches_the_pipe(run_folder):
    sims = np.random.default_rng(0).standard_normal((10, 50)).astype(np.float32)
    np.save(run_folder["folder"] / "a.npy", sims)
    run = run_command(with_private_dev([sys.executable, "eval.py", "--ensemble", str(run_folder["folder"] / "a.npy"),
                                        "--json", "/dev/stdout"]), timeout=300)
    results, end = json.JSONDecoder().raw_decode(run.out)
    assert results["n_images"] == 10 and results["n_captions"] == 50 and "R@1" in run.out[end:]


def test_retrieve_query_refuses_a_json_inside_its_index(run_folder):
    index = run_folder["folder"] / "idx"
    run_main(retrieve.main, ["build", "--model_path", run_folder["model"], "--images",
                             str(run_folder["split"] / "test_ims.npy"), "--index", str(index), "--no_progress"])
    before = file_bytes(*(index / name for name in os.listdir(index)))
    message = one_error_line(run_main(retrieve.main, ["query", "--index", str(index), "--query", "a dog",
                                                  "--json", str(index / "manifest.json")], expect=None))
    assert message.startswith(f"--json {index / 'manifest.json'}: is the same file as --index {index} "
                              f"(its file {index / 'manifest.json'}), an input of this command")
    assert file_bytes(*(index / name for name in os.listdir(index))) == before


def test_a_build_after_an_interrupted_swap_puts_the_index_back_and_never_replaces_it_silently(run_folder):
    folder, images = run_folder["folder"], str(run_folder["split"] / "test_ims.npy")
    build = ["build", "--model_path", run_folder["model"], "--images", images, "--no_progress"]
    run_main(retrieve.main, build + ["--index", str(folder / "idx")])
    dead = dead_pid()
    orphan = folder / f"idx.xdim-old-{dead}"
    os.rename(folder / "idx", orphan)  # a build killed between the two renames of its swap
    before = file_bytes(*(orphan / name for name in os.listdir(orphan)))
    message = one_error_line(run_main(retrieve.main, build + ["--index", str(folder / "idx")], expect=None))
    assert message == (f"{folder / 'idx'}: put back from {orphan}, where an interrupted replacement (process "
                       f"{dead}) had moved it; nothing was written, run the command again to replace it")
    assert file_bytes(*(folder / "idx" / name for name in os.listdir(folder / "idx"))) == {
        path.replace(orphan.name, "idx"): data for path, data in before.items()}
    again = one_error_line(run_main(retrieve.main, build + ["--index", str(folder / "idx")], expect=None))
    assert again == f"{folder / 'idx'}: already exists (pass --overwrite to rebuild it)"


def test_distill_refuses_an_out_that_is_the_checkpoint_before_training(run_folder, monkeypatch):
    from lib.retrieval import shortlist
    monkeypatch.setattr(shortlist, "distill_head", lambda *a, **k: pytest.fail("distilled before refusing"))
    before = file_bytes(run_folder["model"])
    message = one_error_line(run_main(retrieve.main, ["distill", "--model_path", run_folder["model"], "--epochs", "1",
                                                  "--out", run_folder["model"], "--device", "cpu"], expect=None))
    assert message.startswith(f"--out {run_folder['model']}: is the same file as --model_path ")
    assert file_bytes(run_folder["model"]) == before


# ---------------------------------------------------------------- the converter: a name, a whole split

def records(n, seed, prefix):
    rng = np.random.default_rng(seed)
    return [(f"{prefix}{i}", 640, 480, rng.random((5, 4), dtype=np.float32),
             rng.standard_normal((5, TINY_IMG_DIM)).astype(np.float32)) for i in range(n)]


def convert(tsv, out, *extra, expect=0):
    return run_main(convert_features.main, ["--tsv", tsv, "--out", str(out), "--split", "g", "--no_progress",
                                            *extra], expect=expect)


def test_a_split_name_that_leaves_out_is_refused(tmp_path):
    tsv = write_tsv(tmp_path / "f.tsv", records(2, 0, "img"))
    out = tmp_path / "out"
    message = one_error_line(run_main(convert_features.main, ["--tsv", tsv, "--out", str(out), "--split", "../escaped",
                                                          "--no_progress"], expect=None))
    assert message == (f"--split '../escaped': must be a plain name (no '/', not '.' or '..'): the files named "
                       f"after it are written inside {out} and nowhere else")
    assert sorted(os.listdir(tmp_path)) == ["f.tsv"]


KILLED_AFTER_FEATURES = """
import os, sys
replace = os.replace
def replace_then_die(source, target):
    replace(source, target)
    if target.endswith("g_ims.npy"):
        os._exit(9)
os.replace = replace_then_die
import convert_features
convert_features.main(sys.argv[1:])
"""


def test_a_conversion_killed_between_its_renames_is_refused_by_readers_then_completed(run_folder):
    folder = run_folder["folder"]
    out = folder / "mine"
    convert(write_tsv(folder / "old.tsv", records(3, 0, "old")), out)
    new_tsv = write_tsv(folder / "new.tsv", records(3, 1, "new"))
    killed = run_command([sys.executable, "-c", KILLED_AFTER_FEATURES, "--tsv", new_tsv, "--out", str(out),
                          "--split", "g", "--overwrite", "--no_progress"], expect=9, timeout=300)
    assert killed.code == 9
    message = one_error_line(run_main(retrieve.main, ["build", "--model_path", run_folder["model"], "--images",
                                                  str(out / "g_ims.npy"), "--index", str(folder / "idx"),
                                                  "--no_progress"], expect=None))
    assert message == (f"{out}: the files of g may not belong together: replacing them was interrupted "
                       f"({out / 'g.xdim-commit'} is left); convert the split again (convert_features.py --out "
                       f"{out} --split g --overwrite), which also completes the interrupted renames")
    assert not os.path.exists(folder / "idx")
    assert message in inspect_split(str(out), "g").errors  # check_data.py says the same
    again = convert(new_tsv, out, "--overwrite")
    assert f"put {out / 'g_ids.txt'} into place, completing an interrupted write\n" in again.err
    _, ids, _ = load_gallery_images(str(out / "g_ims.npy"), TINY_IMG_DIM)
    assert ids == ["new0", "new1", "new2"]
    assert sorted(os.listdir(out)) == ["g_boxes.npy", "g_ids.txt", "g_image_info.npy", "g_ims.npy"]


# ---------------------------------------------------------------- analyze.py: one report, one writer

def analyze_run(run_folder, model, out, expect=0):
    return run_main(analyze.main, ["--model_path", model, "--out", str(out), "--data_path", run_folder["data_path"],
                                   "--data_name", run_folder["data_name"], "--pair", "0", "0", "--device", "cpu",
                                   "--no_progress"], expect=expect)


def test_analyze_interrupted_halfway_leaves_the_previous_report_whole(run_folder, monkeypatch):
    from lib.analysis import figures
    out = run_folder["folder"] / "analysis"
    analyze_run(run_folder, run_folder["model"], out)
    before = folder_state(out)
    other, _ = _checkpoint(run_folder["folder"], run_folder["bert"], run_folder["data"], seed=1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(figures, "pair_attention", killed)  # the last figure: the mask figures are written
    run = analyze_run(run_folder, other, out, expect=130)  # Ctrl-C: one line, the shell's status
    assert run.err.endswith("error: interrupted\n")
    assert folder_state(out) == before
    assert not [name for name in os.listdir(run_folder["folder"]) if "xdim" in name or name.endswith(".lock")]


def test_a_second_analyze_into_the_same_out_is_refused(run_folder):
    out = run_folder["folder"] / "analysis"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = run_folder["folder"] / "analysis.analyze.lock"
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "now"}),
                        encoding="utf-8")
        message = one_error_line(analyze_run(run_folder, run_folder["model"], out, expect=None))
    finally:
        other.kill()
        other.wait()
    assert message == (f"{run_folder['folder']}: in use by another analyze.py (pid {other.pid}, started now, "
                       f"lock file {lock}); stop it or wait for it to finish, or use another --out")
    assert not out.exists()

"""The one output rule of lib/formats/atomic.py: special files written through, links followed,
outputs that are inputs refused, staging names no user file has, groups of files committed whole."""
import json
import os
import select
import shutil
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from helpers import dead_pid

from lib.errors import XDimError
from lib.evaluation.score_files import save_score_file
from lib.formats import atomic
from lib.formats.checkpoint import remove_stale_temp_files, save_checkpoint


class FifoReader:
    """Reads what is written to the FIFO `path`, in a thread, until its writer closes it. Opened
    without blocking; when no writer comes within 5 s (code that replaced the FIFO) it reads nothing."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        start, writer_seen = time.monotonic(), False
        while time.monotonic() - start < (30 if writer_seen else 5):
            select.select([self.fd], [], [], 0.05)
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:  # a writer holds it open, nothing written yet
                writer_seen = True
                continue
            if chunk:
                writer_seen = True
                self.data += chunk
            elif writer_seen:
                return
            else:  # no writer has opened it yet
                time.sleep(0.01)

    def read(self):
        """-> the bytes written, once the writer closed the FIFO."""
        self.thread.join()
        os.close(self.fd)
        return bytes(self.data)


# ---------------------------------------------------------------- 1. special files and links

def test_a_fifo_output_is_written_through_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "results.json"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    atomic.write_json(str(fifo), {"rsum": 512.5})
    assert json.loads(reader.read()) == {"rsum": 512.5}
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["results.json"]


def test_save_sims_into_a_fifo_writes_the_matrix_there_and_no_extra_npy_file(tmp_path):
    fifo = tmp_path / "sims"  # no .npy: a regular file of that name would get one appended
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    sims = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_score_file(sims, str(fifo))
    data = reader.read()
    assert data.startswith(b"\x93NUMPY") and data.endswith(sims.tobytes())
    assert os.listdir(tmp_path) == ["sims"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlinked_output_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "scores.json"
    target.write_text("old", encoding="utf-8")
    link = tmp_path / "scores.json"
    link.symlink_to(target)
    atomic.write_json(str(link), {"new": 1})
    assert os.path.islink(link) and os.readlink(link) == str(target)
    assert json.loads(target.read_text(encoding="utf-8")) == {"new": 1}
    assert sorted(os.listdir(tmp_path)) == ["real", "scores.json"] and os.listdir(tmp_path / "real") == ["scores.json"]


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    atomic.write_json(str(link), [1])
    assert os.path.islink(link) and json.loads((tmp_path / "elsewhere.json").read_text(encoding="utf-8")) == [1]


WRITE_TO_STDOUT = "import sys; from lib.formats.atomic import write_json; write_json(sys.argv[1], {'hits': [3, 1]})"


def stdout_link(folder):
    """A link shaped like /dev/stdout (-> /proc/self/fd/1), private to the test: code that replaced
    the link instead of writing through it damages nothing."""
    link = folder / "stdout"
    link.symlink_to("/proc/self/fd/1")
    return str(link)


def test_a_link_to_stdout_reaches_the_pipe_behind_it(tmp_path):
    link = stdout_link(tmp_path)
    run = subprocess.run([sys.executable, "-c", WRITE_TO_STDOUT, link], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"hits": [3, 1]} and os.readlink(link) == "/proc/self/fd/1"


def test_a_link_to_stdout_redirected_to_a_file_writes_that_file_in_place(tmp_path):
    link, log = stdout_link(tmp_path), tmp_path / "out.txt"
    with open(log, "w") as stdout:
        inode = os.fstat(stdout.fileno()).st_ino
        run = subprocess.run([sys.executable, "-c", WRITE_TO_STDOUT, link], stdout=stdout, timeout=120)
    assert run.returncode == 0 and os.readlink(link) == "/proc/self/fd/1"
    assert os.stat(log).st_ino == inode and json.loads(log.read_text(encoding="utf-8")) == {"hits": [3, 1]}


CHARACTER_DEVICE = """
import os, stat, sys
from lib.formats.atomic import write_json
folder = sys.argv[1]
os.mknod(os.path.join(folder, "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
write_json(os.path.join(folder, "null"), {"a": 1})
print(stat.S_ISCHR(os.lstat(os.path.join(folder, "null")).st_mode), sorted(os.listdir(folder)))
"""


def run_on_private_tmpfs(folder, code, size=None):
    """python -c `code` FOLDER with a fresh tmpfs (of `size`, e.g. '64k') mounted on `folder` in a
    private mount namespace: root only (skipped otherwise), nothing outside the test is at stake."""
    if (os.geteuid() != 0 or shutil.which("unshare") is None
            or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0):
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    folder.mkdir()
    options = f"-o size={size} " if size else ""
    script = f'mount -t tmpfs {options}tmpfs "{folder}" && exec "{sys.executable}" -c "$0" "{folder}"'
    run = subprocess.run(["unshare", "-m", "sh", "-c", script, code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_a_character_device_is_written_through_not_replaced(tmp_path):
    assert run_on_private_tmpfs(tmp_path / "dev", CHARACTER_DEVICE) == "True ['null']"


# ---------------------------------------------------------------- 2. outputs that are inputs

def test_an_existing_output_that_is_an_input_is_refused_through_any_spelling(tmp_path):
    model = tmp_path / "M.pth"
    model.write_bytes(b"weights")
    os.link(model, tmp_path / "hard.pth")
    (tmp_path / "soft.json").symlink_to(model)
    for output in (model, tmp_path / "hard.pth", tmp_path / "soft.json", tmp_path / "." / "M.pth"):
        with pytest.raises(XDimError) as caught:
            atomic.check_outputs([("--json", str(output))], [("--model_path", str(model))])
        assert str(caught.value) == (f"--json {output}: is the same file as --model_path {model}, an input of "
                                     f"this command, which writing would replace; give another file "
                                     f"(nothing was changed)")
    assert model.read_bytes() == b"weights"


def test_an_output_inside_an_input_folder_is_refused(tmp_path):
    index = tmp_path / "idx"
    index.mkdir()
    (index / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(XDimError, match=r"is the same file as --index .*idx \(its file .*manifest.json\)"):
        atomic.check_outputs([("--json", str(index / "manifest.json"))], [("--index", str(index))])


def test_two_outputs_naming_one_file_are_refused_and_distinct_ones_pass(tmp_path):
    with pytest.raises(XDimError, match="names the same file as --json"):
        atomic.check_outputs([("--json", str(tmp_path / "a.json")), ("--save_sims", str(tmp_path / "." / "a.json"))])
    atomic.check_outputs([("--json", str(tmp_path / "a.json")), ("--save_sims", str(tmp_path / "a.npy"))],
                         [("--model_path", str(tmp_path / "missing.pth"))])


def test_devices_are_never_taken_for_inputs(tmp_path):
    atomic.check_outputs([("--json", "/dev/null"), ("--save_sims", "/dev/null")], [("--ensemble", "/dev/null")])


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ""])
def test_a_name_that_leaves_its_folder_is_refused(tmp_path, name):
    with pytest.raises(XDimError) as caught:
        atomic.check_plain_name("--split", name, str(tmp_path))
    assert str(caught.value).startswith(f"--split {name!r}: must be a plain name")
    atomic.check_plain_name("--split", "gallery.v2", str(tmp_path))


# ---------------------------------------------------------------- 3. look-alike user files

def test_user_files_that_look_like_leftovers_are_never_touched(tmp_path):
    look_alikes = {"scores.npy.old-2024": b"thesis scores", "scores.npy.tmp-2023": b"a draft",
                   ".scores.npy.2023.tmp": b"hidden draft"}
    for name, data in look_alikes.items():
        (tmp_path / name).write_bytes(data)
    save_score_file(np.zeros((1, 5), dtype=np.float32), str(tmp_path / "scores.npy"))
    atomic.write_json(str(tmp_path / "res.json"), {"fresh": True})
    for name, data in look_alikes.items():
        assert (tmp_path / name).read_bytes() == data


def test_a_lone_old_file_is_not_renamed_over_the_output(tmp_path):
    (tmp_path / "res.json.old-2024").write_text("last year's results", encoding="utf-8")
    atomic.write_json(str(tmp_path / "res.json"), {"new": 1})
    assert (tmp_path / "res.json.old-2024").read_text(encoding="utf-8") == "last year's results"
    assert json.loads((tmp_path / "res.json").read_text(encoding="utf-8")) == {"new": 1}


def test_training_start_cleanup_keeps_a_model_best_look_alike(tmp_path):
    dead = dead_pid()
    (tmp_path / "model_best.pth.old-2024").write_bytes(b"the 2024 model")
    (tmp_path / f"checkpoint.pth.xdim-tmp-{dead}").write_bytes(b"partial")
    removed = remove_stale_temp_files(str(tmp_path))
    assert os.listdir(tmp_path) == ["model_best.pth.old-2024"]
    assert removed == [str(tmp_path / f"checkpoint.pth.xdim-tmp-{dead}")]


def test_a_folder_look_alike_is_neither_restored_nor_replaced(tmp_path):
    thesis = tmp_path / "results.old-2024"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("chapter 1", encoding="utf-8")
    with atomic.atomic_folder(str(tmp_path / "results")) as staging:
        (tmp_path / os.path.basename(staging) / "manifest.json").write_text("{}", encoding="utf-8")
    assert sorted(os.listdir(tmp_path)) == ["results", "results.old-2024"]
    assert os.listdir(tmp_path / "results") == ["manifest.json"]
    assert (thesis / "thesis.tex").read_text(encoding="utf-8") == "chapter 1"


def test_an_interrupted_swap_is_put_back_and_reported_never_replaced_silently(tmp_path):
    dead = dead_pid()
    orphan = tmp_path / f"idx.xdim-old-{dead}"  # a kill between the two renames of a swap
    orphan.mkdir()
    (orphan / "manifest.json").write_text("the previous index", encoding="utf-8")
    (tmp_path / f"idx.xdim-staging-{dead}").mkdir()
    with pytest.raises(XDimError) as caught:
        with atomic.atomic_folder(str(tmp_path / "idx")):
            pytest.fail("the restored folder would be replaced")
    assert str(caught.value) == (f"{tmp_path / 'idx'}: put back from {orphan}, where an interrupted replacement "
                                 f"(process {dead}) had moved it; nothing was written, run the command again "
                                 f"to replace it")
    assert (tmp_path / "idx" / "manifest.json").read_text(encoding="utf-8") == "the previous index"
    assert sorted(os.listdir(tmp_path)) == ["idx", f"idx.xdim-staging-{dead}"]


def test_a_restore_never_overwrites_an_existing_target(tmp_path):
    dead = dead_pid()
    (tmp_path / f"idx.xdim-old-{dead}").mkdir()
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "manifest.json").write_text("the current index", encoding="utf-8")
    atomic.restore_interrupted_swap(str(tmp_path / "idx"))
    assert (tmp_path / "idx" / "manifest.json").read_text(encoding="utf-8") == "the current index"


# ---------------------------------------------------------------- 5. groups of files

def _pending_group(folder, texts):
    files = []
    for name, text in texts.items():
        pending = atomic.PendingFile(str(folder / name), "w", encoding="utf-8")
        pending.write(text)
        files.append(pending)
    return files


def test_a_group_is_renamed_whole_and_leaves_no_journal(tmp_path):
    atomic.commit_together(_pending_group(tmp_path, {"g_ims.npy": "new ims", "g_ids.txt": "new ids"}),
                           str(tmp_path), "g")
    assert sorted(os.listdir(tmp_path)) == ["g_ids.txt", "g_ims.npy"]
    atomic.check_group_complete(str(tmp_path), "g", "convert again")


def test_a_group_cut_between_its_renames_is_refused_then_completed(tmp_path):
    for name in ("g_ims.npy", "g_ids.txt"):
        (tmp_path / name).write_text("old", encoding="utf-8")
    files = _pending_group(tmp_path, {"g_ims.npy": "new ims", "g_ids.txt": "new ids"})
    for file in files:
        file.finish()
    dead = dead_pid()
    journal = tmp_path / "g.xdim-commit"
    journal.write_text(json.dumps({"pid": dead, "files": [[os.path.basename(f.temp), os.path.basename(f.target)]
                                                          for f in files]}), encoding="utf-8")
    files[0].publish()  # the writer died after its first rename: new features, old ids
    with pytest.raises(XDimError) as caught:
        atomic.check_group_complete(str(tmp_path), "g", "convert the split again")
    assert str(caught.value) == (f"{tmp_path}: the files of g may not belong together: replacing them was "
                                 f"interrupted ({journal} is left); convert the split again")
    assert atomic.complete_interrupted_group(str(tmp_path), "g") == [str(tmp_path / "g_ids.txt")]
    assert {name: (tmp_path / name).read_text(encoding="utf-8") for name in os.listdir(tmp_path)} == {
        "g_ims.npy": "new ims", "g_ids.txt": "new ids"}


def test_a_group_being_written_by_a_live_process_is_not_touched(tmp_path):
    journal = tmp_path / "g.xdim-commit"
    journal.write_text(json.dumps({"pid": os.getpid(), "files": []}), encoding="utf-8")
    with pytest.raises(XDimError, match="are being replaced right now"):
        atomic.check_group_complete(str(tmp_path), "g", "")
    with pytest.raises(XDimError, match=f"process {os.getpid()} is writing the files of g right now"):
        atomic.commit_together(_pending_group(tmp_path, {"g_ids.txt": "x"}), str(tmp_path), "g")
    assert journal.exists()


# ---------------------------------------------------------------- a full disk inside torch.save

def test_a_full_disk_inside_torch_save_is_one_line_and_keeps_the_previous_file(tmp_path, full_disk):
    full_disk("checkpoint.pth", 1000)
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"previous")
    with pytest.raises(XDimError) as caught:
        save_checkpoint({"weights": torch.zeros(10000)}, str(target))
    assert str(caught.value).startswith(f"{target}: not written, disk full (")
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["checkpoint.pth"]


FILL_A_SMALL_DISK = """
import sys, torch
from lib.formats.checkpoint import save_checkpoint
try:
    save_checkpoint({"weights": torch.zeros(100000)}, sys.argv[1] + "/checkpoint.pth")
except Exception as error:
    print(type(error).__name__, str(error).split(" (")[0])
"""


def test_a_real_full_disk_inside_torch_save(tmp_path):
    """A 64 KiB tmpfs, filled by a 400 KB checkpoint."""
    folder = tmp_path / "small"
    assert run_on_private_tmpfs(folder, FILL_A_SMALL_DISK, size="64k") == (
        f"XDimError {folder}/checkpoint.pth: not written, disk full")

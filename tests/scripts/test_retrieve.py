"""retrieve.py's numeric options at their boundaries: zero, negative and non-finite refused in one
`error:` line before any file is read."""
import pytest

import retrieve

DISTILL = ["distill", "--model_path", "missing.pth"]
BUILD = ["build", "--model_path", "missing.pth", "--images", "missing_ims.npy", "--index", "idx"]
QUERY = ["query", "--index", "idx", "--query", "a dog"]


@pytest.mark.parametrize("command, option, value, requirement", [
    *[(DISTILL, "--learning_rate", value, "must be a positive number") for value in ("0", "-0.002", "nan", "inf")],
    *[(DISTILL, option, value, "must be at least 1")
      for option in ("--epochs", "--batch_images", "--size", "--group") for value in ("0", "-1")],
    (BUILD, "--batch_size", "0", "must be at least 1"),
    (QUERY, "--top_k", "0", "must be at least 1"),
    (QUERY, "--shortlist", "0", "must be at least 1"),
    (QUERY, "--shortlist", "-3", "must be at least 1"),
])
def test_out_of_range_number_is_one_error_line_before_any_file_is_read(tmp_path, monkeypatch, capsys,
                                                                       command, option, value, requirement):
    # catches: --learning_rate of distill left unchecked (0 trains a head that never moves),
    # a build --batch_size 0 reaching the encoder, `< 0` for `< 1`.
    monkeypatch.chdir(tmp_path)
    assert retrieve.main([*command, f"{option}={value}"]) == 2
    shown = float(value) if option == "--learning_rate" else value
    assert capsys.readouterr().err.splitlines() == [f"error: {option} {shown}: {requirement}"]
    assert list(tmp_path.iterdir()) == []

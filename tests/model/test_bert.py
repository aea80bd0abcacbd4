"""lib/model/bert.py: finding BERT offline, in the hub cache or a local folder."""
import shutil

import pytest
from helpers import model_from_options, tiny_opt

from lib.errors import XDimError
from lib.model import bert
from lib.model.bert import load_tokenizer


def test_hub_name_offline_fails_fast_with_the_hint(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(bert, "hub_reachable", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(XDimError, match=r"^nobody/no-such-bert: not a local folder, not in the hub cache, "
                                        r"and HF_HUB_OFFLINE forbids downloading it; on a machine with internet"):
        bert.resolve_bert_path("nobody/no-such-bert")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(bert, "hub_reachable", lambda timeout=bert.HUB_TIMEOUT_S: False)
    with pytest.raises(XDimError, match=r"does not answer within 3 s; .*HF_HUB_OFFLINE=1"):
        bert.resolve_bert_path("nobody/no-such-bert")


def test_hub_cache_and_local_folders_need_no_network(monkeypatch, tmp_path, tiny_bert_dir):
    import huggingface_hub._snapshot_download as snapshot_module
    from huggingface_hub import constants
    monkeypatch.setattr(bert, "hub_reachable", lambda *a, **k: pytest.fail("the hub was contacted"))
    assert bert.resolve_bert_path(tiny_bert_dir) == tiny_bert_dir
    repo = tmp_path / "models--nobody--cached-bert"
    snapshot = repo / "snapshots" / "0123abc"
    shutil.copytree(tiny_bert_dir, snapshot)  # config, vocabulary, weights: a complete cache entry
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    # Where snapshot_download looks by default (huggingface_hub 1.x/2.x, and 0.x as transformers 4.30 uses).
    for module in (constants, snapshot_module):
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, str(tmp_path))
    assert bert.resolve_bert_path("nobody/cached-bert") == str(snapshot)
    assert load_tokenizer(str(snapshot)).convert_tokens_to_ids("dog") == load_tokenizer(tiny_bert_dir).convert_tokens_to_ids("dog")


def test_missing_pretrained_bert_says_how_to_get_it(tmp_path):
    with pytest.raises(XDimError, match="cannot load pretrained BERT weights.*--bert_path"):
        model_from_options(tiny_opt(str(tmp_path / "no-such-bert")))

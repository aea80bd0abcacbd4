"""Where BERT comes from: a hub name or a local folder, its tokenizer, config and vocabulary.

Every BERT-related load goes through this module, so the offline behaviour and the
download hint are the same everywhere. A "BERT folder" holds config.json,
vocab.txt and, for training, the pretrained weights.
"""
import hashlib
import json
import os
import tempfile

from lib.errors import XDimError, first_line

DEFAULT_BERT = "bert-base-uncased"
# How to get BERT when the hub cannot be reached (said by every BERT loading error).
BERT_DOWNLOAD_HINT = (
    f"on a machine with internet, run `python -c \"from transformers import BertModel, "
    f"BertTokenizerFast as T; n='{DEFAULT_BERT}'; BertModel.from_pretrained(n).save_pretrained('bert'); "
    f"T.from_pretrained(n).save_pretrained('bert')\"` and pass --bert_path bert")
# bert-base-uncased's config.json and vocab.txt (no weights), shipped for offline use.
BUNDLED_BERT_BASE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "data", "bert-base-uncased")


def bert_config_dict(bert_path):
    """The config of the BERT at `bert_path` (local folder or hub name) as a plain dict."""
    from transformers import BertConfig
    try:
        return BertConfig.from_pretrained(bert_path).to_dict()
    except (OSError, ValueError) as exc:
        raise XDimError(f"{bert_path}: cannot read a BERT config.json ({first_line(exc)})") from None


def build_bert(bert_path=None, config=None):
    """A `BertModel`: pretrained weights from `bert_path`, or the bare architecture of `config`.

    `config` (a dict) is used when the weights will come from an X-Dim checkpoint.
    """
    from transformers import BertConfig, BertModel
    if config is not None:
        return BertModel(BertConfig.from_dict(dict(config)))
    bert_path = bert_path or DEFAULT_BERT
    try:
        return BertModel.from_pretrained(bert_path)
    except (OSError, ValueError) as exc:
        raise XDimError(f"{bert_path}: cannot load pretrained BERT weights ({first_line(exc)}). "
                        f"Training needs them: {BERT_DOWNLOAD_HINT}") from None


def load_tokenizer(bert_path=None):
    """The fast, lower-casing BERT tokenizer of a local folder (vocab.txt) or a hub name.

    Raises XDimError when it cannot be loaded.
    """
    from transformers import BertTokenizerFast
    bert_path = bert_path or DEFAULT_BERT
    if os.path.isdir(bert_path) and not os.path.isfile(os.path.join(bert_path, "vocab.txt")):
        raise XDimError(f"{os.path.join(bert_path, 'vocab.txt')}: BERT vocabulary not found")
    try:
        return BertTokenizerFast.from_pretrained(bert_path, do_lower_case=True)
    except (OSError, ValueError) as error:
        raise XDimError(f"{bert_path}: cannot load the BERT tokenizer ({first_line(error)}); "
                        f"{BERT_DOWNLOAD_HINT}") from None


def bert_max_positions(bert_path=None):
    """`max_position_embeddings` of a BERT config (local folder or hub name): the longest caption."""
    return bert_config_dict(bert_path or DEFAULT_BERT)["max_position_embeddings"]


def bert_vocab(bert_path):
    """BERT's vocabulary as a list of tokens ordered by id (a local folder or a hub name)."""
    path = os.path.join(bert_path, "vocab.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    from transformers import BertTokenizerFast
    by_id = BertTokenizerFast.from_pretrained(bert_path).get_vocab()
    return sorted(by_id, key=by_id.get)


def write_bert_folder(folder, config, vocab):
    """Write a BERT folder without weights: config.json, tokenizer_config.json, vocab.txt.

    config: dict; vocab: tokens ordered by id. vocab.txt is written last and renamed
    into place, so its presence means the folder is complete.
    """
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"do_lower_case": True, "model_max_length": config["max_position_embeddings"]}, f)
    partial = os.path.join(folder, f"vocab.txt.{os.getpid()}.tmp")
    with open(partial, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    os.replace(partial, os.path.join(folder, "vocab.txt"))
    return folder


def materialize_bert_dir(config, vocab):
    """Write a BERT config and vocabulary (no weights) to a folder and return its path.

    Checkpoints carry both, so evaluating one needs neither the network nor the
    original BERT folder; the folder name is a hash of the contents, so it is reused.
    """
    blob = json.dumps([config, vocab], sort_keys=True).encode("utf-8")
    folder = os.path.join(tempfile.gettempdir(), "xdim-bert-" + hashlib.sha1(blob).hexdigest()[:16])
    if not os.path.isfile(os.path.join(folder, "vocab.txt")):
        write_bert_folder(folder, config, vocab)
    return folder

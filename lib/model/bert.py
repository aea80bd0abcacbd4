"""Where BERT comes from: a hub name or a local folder, its tokenizer, config and vocabulary.

Every BERT-related load goes through this module, so the offline behaviour and the
download hint are the same everywhere. A "BERT folder" holds config.json,
vocab.txt and, for training, the pretrained weights. `resolve_bert_path` turns
--bert_path into what the loaders read, once per entry point.
"""
import hashlib
import json
import os
import socket
import tempfile
import urllib.parse
import urllib.request

from lib.errors import XDimError, first_line
from lib.formats.atomic import write_json, write_text

DEFAULT_BERT = "bert-base-uncased"
# How to get BERT when the hub cannot be reached (said by every BERT loading error).
BERT_DOWNLOAD_HINT = (
    f"on a machine with internet, run `python -c \"from transformers import BertModel, "
    f"BertTokenizerFast as T; n='{DEFAULT_BERT}'; BertModel.from_pretrained(n).save_pretrained('bert'); "
    f"T.from_pretrained(n).save_pretrained('bert')\"` and pass --bert_path bert")
# Seconds to wait for the model hub's host before calling the machine offline.
HUB_TIMEOUT_S = 3.0
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# bert-base-uncased's config.json and vocab.txt (no weights), shipped for offline use.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED_BERT_BASE = os.path.join(REPO_ROOT, "data", "bert-base-uncased")


def hub_offline_requested():
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks never to contact the hub."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_address():
    """(host, port) a hub request connects to first: the https proxy if one is set, else the hub."""
    from huggingface_hub import constants
    url = urllib.parse.urlparse(urllib.request.getproxies().get("https") or constants.ENDPOINT)
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout=HUB_TIMEOUT_S):
    """True when a TCP connection to `hub_address()` opens within `timeout` seconds."""
    try:
        with socket.create_connection(hub_address(), timeout=timeout):
            return True
    except OSError:
        return False


def cached_hub_folder(name):
    """The local hub-cache folder of hub model `name` when it holds config, vocabulary and
    weights (what training reads), else None. Never contacts the hub."""
    from huggingface_hub import snapshot_download
    try:
        folder = snapshot_download(name, local_files_only=True)
    except (OSError, ValueError):
        return None
    complete = all(os.path.isfile(os.path.join(folder, f)) for f in ("config.json", "vocab.txt"))
    if complete and any(os.path.isfile(os.path.join(folder, f)) for f in WEIGHT_FILES):
        return folder
    return None


def resolve_bert_path(bert_path=None):
    """What --bert_path means here, decided once at an entry point -> a local folder or a hub name.

    A local folder stays itself; a hub name (default bert-base-uncased) already in the
    hub cache becomes that cache folder, read without network. Otherwise the hub must
    be reachable: when HF_HUB_OFFLINE is set, or when the hub's host does not answer
    within HUB_TIMEOUT_S, XDimError says how to get BERT, instead of transformers
    retrying for minutes.
    """
    bert_path = bert_path or DEFAULT_BERT
    if os.path.isdir(bert_path):
        return bert_path
    cached = cached_hub_folder(bert_path)
    if cached:
        return cached
    if hub_offline_requested():
        raise XDimError(f"{bert_path}: not a local folder, not in the hub cache, and HF_HUB_OFFLINE "
                        f"forbids downloading it; {BERT_DOWNLOAD_HINT}")
    if not hub_reachable():
        host, port = hub_address()
        raise XDimError(f"{bert_path}: not a local folder, not in the hub cache, and the model hub "
                        f"({host}:{port}) does not answer within {HUB_TIMEOUT_S:g} s; {BERT_DOWNLOAD_HINT} "
                        f"(HF_HUB_OFFLINE=1 keeps transformers from ever contacting the hub)")
    return bert_path


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

    config: dict; vocab: tokens ordered by id. Each file is written atomically
    (lib.formats.atomic) and vocab.txt last, so its presence means the folder is complete.
    """
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"), config)
    write_json(os.path.join(folder, "tokenizer_config.json"),
               {"do_lower_case": True, "model_max_length": config["max_position_embeddings"]})
    write_text(os.path.join(folder, "vocab.txt"), "\n".join(vocab) + "\n")
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

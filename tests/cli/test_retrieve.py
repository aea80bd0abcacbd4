"""lib/cli/retrieve.py: retrieve.py's options generated from its configs (today's names and defaults,
written here by hand), the exclusive groups, typed frozen configs, and checks that stop a run before
anything loads."""
import argparse
import dataclasses

import pytest
from helpers import help_text, one_error_line, run_main

import retrieve
from lib.cli import retrieve as retrieve_cli
from lib.cli.retrieve import check_retrieval_options, retrieval_configs, retrieval_parser
from lib.errors import XDimError
from lib.retrieval.config import BuildConfig, DistillConfig, QueryConfig
from lib.runtime.device import RuntimeConfig

MINIMAL = {
    "distill": ["distill", "--model_path", "m.pth"],
    "build": ["build", "--model_path", "m.pth", "--images", "g_ims.npy", "--index", "idx"],
    "query": ["query", "--index", "idx", "--query", "a dog"],
}


def parse(argv):
    return retrieval_configs(retrieval_parser(retrieve.__doc__).parse_args(argv))


def test_distill_defaults_are_todays():
    config, runtime = parse(MINIMAL["distill"])
    assert config == DistillConfig(model_path="m.pth", data_path=None, data_name=None, split="train", epochs=30,
                                   batch_images=100, learning_rate=2e-3, temperature=0.05, size=256, group=4,
                                   seed=0, out=None, bert_path=None)
    assert runtime == RuntimeConfig(device="auto", amp="none", threads=0)


def test_build_defaults_are_todays():
    config, _ = parse(MINIMAL["build"])
    assert config == BuildConfig(model_path="m.pth", head=None, images="g_ims.npy", captions=None,
                                 image_folder=None, index="idx", index_type="auto", batch_size=None, update=False,
                                 workers=0, overwrite=False, no_progress=False, bert_path=None)


def test_query_defaults_are_todays():
    config, _ = parse(MINIMAL["query"])
    assert config == QueryConfig(index="idx", query="a dog", queries=None, image_index=None, image_id=None,
                                 query_image=None, images=None, top_k=10, shortlist=100, json=None, html=None,
                                 explain=None, image_folder=None, model_path=None, head=None, bert_path=None)


def test_every_option_reaches_its_field_with_its_type():
    config, runtime = parse(["query", "--index", "idx", "--image_index", "7", "--images", "q_ims.npy", "--top_k",
                             "3", "--shortlist", "20", "--json", "h.json", "--html", "h.html", "--explain", "why",
                             "--image_folder", "photos", "--model_path", "m.pth", "--head", "h.pth", "--bert_path",
                             "bert", "--device", "cpu", "--amp", "bf16", "--threads", "2"])
    assert config == QueryConfig(index="idx", image_index=7, images="q_ims.npy", top_k=3, shortlist=20,
                                 json="h.json", html="h.html", explain="why", image_folder="photos",
                                 model_path="m.pth", head="h.pth", bert_path="bert")
    assert runtime == RuntimeConfig(device="cpu", amp="bf16", threads=2)
    distill, _ = parse(["distill", "--model_path", "m.pth", "--data_path", "d", "--data_name", "n", "--split",
                        "dev", "--epochs", "2", "--batch_images", "8", "--learning_rate", "0.1", "--temperature",
                        "0.5", "--size", "64", "--group", "1", "--seed", "5", "--out", "o.pth"])
    assert distill == DistillConfig(model_path="m.pth", data_path="d", data_name="n", split="dev", epochs=2,
                                    batch_images=8, learning_rate=0.1, temperature=0.5, size=64, group=1, seed=5,
                                    out="o.pth")
    build, _ = parse(["build", "--model_path", "m.pth", "--image_folder", "album", "--index", "idx", "--index_type",
                      "hnsw", "--batch_size", "4", "--update", "--workers", "2", "--overwrite", "--no_progress"])
    assert build == BuildConfig(model_path="m.pth", image_folder="album", index="idx", index_type="hnsw",
                                batch_size=4, update=True, workers=2, overwrite=True, no_progress=True)


@pytest.mark.parametrize("command, options", [
    ("distill", {"--model_path", "--data_path", "--data_name", "--split", "--epochs", "--batch_images",
                 "--learning_rate", "--temperature", "--size", "--group", "--seed", "--out"}),
    ("build", {"--model_path", "--head", "--images", "--captions", "--image_folder", "--index", "--index_type",
               "--batch_size", "--update", "--workers", "--overwrite", "--no_progress"}),
    ("query", {"--index", "--query", "--queries", "--image_index", "--image_id", "--query_image", "--images",
               "--top_k", "--shortlist", "--json", "--html", "--explain", "--image_folder", "--model_path",
               "--head"}),
])
def test_each_command_keeps_todays_options(command, options):
    parser = retrieval_parser(retrieve.__doc__)
    sub = parser._subparsers._group_actions[0].choices[command]
    declared = {name for action in sub._actions for name in action.option_strings}
    # a new option may come (one field of the command's config), none of today's may go
    assert options | {"-h", "--help", "--bert_path", "--device", "--amp", "--threads"} <= declared


@pytest.mark.parametrize("argv, refused", [
    (["build", "--model_path", "m", "--index", "i", "--images", "a", "--captions", "b"],
     "argument --captions: not allowed with argument --images"),
    (["build", "--model_path", "m", "--index", "i", "--captions", "b", "--image_folder", "c"],
     "argument --image_folder: not allowed with argument --captions"),
    (["query", "--index", "i", "--query", "x", "--image_index", "3"],
     "argument --image_index: not allowed with argument --query"),
    (["query", "--index", "i", "--queries", "q.txt", "--query_image", "p.jpg"],
     "argument --query_image: not allowed with argument --queries"),
    (["build", "--model_path", "m", "--index", "i"],
     "one of the arguments --images --captions --image_folder is required"),
    (["query", "--index", "i"],
     "one of the arguments --query --queries --image_index --image_id --query_image is required"),
    (["query", "--query", "x"], "the following arguments are required: --index"),
    (["build", "--images", "a", "--index", "i"], "the following arguments are required: --model_path"),
    (["build", "--model_path", "m", "--images", "a", "--index", "i", "--index_type", "ivf"],
     "argument --index_type: invalid choice: 'ivf'"),
])
def test_the_parser_refuses_what_it_refused(argv, refused, capsys):
    with pytest.raises(SystemExit) as stop:
        retrieval_parser(retrieve.__doc__).parse_args(argv)
    assert stop.value.code == 2 and refused in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(MINIMAL))
def test_configs_are_frozen_and_hold_no_namespace(command):
    config, runtime = parse(MINIMAL[command])
    assert type(config) is retrieve_cli.COMMANDS[command][0]
    for value in dataclasses.asdict(config).values():
        assert value is None or type(value) in (str, int, float, bool)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model_path = "other.pth"
    assert not any(isinstance(value, argparse.Namespace) for value in vars(runtime).values())


def test_help_states_each_default_once():
    for command in MINIMAL:
        parser = retrieval_parser(retrieve.__doc__)
        text = help_text(parser._subparsers._group_actions[0].choices[command])
        assert "(default:" in text and "(default: None)" not in text and "(default: False)" not in text
        assert "default %(default)s" not in text
    distill = help_text(retrieval_parser(retrieve.__doc__)._subparsers._group_actions[0].choices["distill"])
    assert "random seed (default: 0)" in distill and "(default: 30)" in distill


@pytest.fixture
def never_loads(monkeypatch):
    """A model load fails the test: the checks must stop the run first."""
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")
    monkeypatch.setattr(retrieve_cli.XDimModel, "from_checkpoint", load)


@pytest.mark.parametrize("argv, message", [
    (["distill", "--model_path", "missing.pth", "--temperature", "0"], "--temperature 0.0: must be a positive number"),
    (["distill", "--model_path", "missing.pth", "--group", "0"], "--group 0: must be at least 1"),
    (["build", "--model_path", "missing.pth", "--images", "g_ims.npy", "--index", "idx", "--update"],
     "--update refreshes an index of an --image_folder; rebuild other indexes with --overwrite"),
    (["build", "--model_path", "missing.pth", "--images", "g_ims.npy", "--index", "idx", "--batch_size", "0"],
     "--batch_size 0: must be at least 1"),
    (["build", "--model_path", "missing.pth", "--image_folder", "album", "--index", "idx", "--workers", "-1"],
     "--workers -1: must be 0 (load in the main process) or more"),
    (["query", "--index", "missing", "--query", "x", "--top_k", "0"], "--top_k 0: must be at least 1"),
    (["query", "--index", "missing", "--query", "x", "--threads", "-1"], "--threads -1: must be 0 (automatic) or more"),
    (["distill", "--model_path", "missing.pth", "--threads", "-2"], "--threads -2: must be 0 (automatic) or more"),
])
def test_a_bad_option_stops_the_run_before_anything_loads(argv, message, never_loads, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert one_error_line(run_main(retrieve.main, argv, expect=2)) == message


def test_query_outputs_are_checked_before_the_index_is_read(tmp_path, never_loads):
    out = tmp_path / "no_such_folder" / "hits.json"
    message = one_error_line(run_main(retrieve.main, ["query", "--index", str(tmp_path / "missing"), "--query", "x",
                                                      "--json", str(out)], expect=2))
    assert message == f"--json {out}: folder {out.parent} does not exist"


def test_a_bad_queries_file_is_reported_before_the_outputs(tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("a dog\n\na cat\n")
    config = QueryConfig(index="idx", queries=str(queries), json=str(tmp_path / "nowhere" / "h.json"))
    with pytest.raises(XDimError, match="q.txt"):
        check_retrieval_options(config, RuntimeConfig())


def test_each_config_goes_to_its_own_check(monkeypatch):
    seen = []
    for name in ("check_distill", "check_build", "check_query"):
        monkeypatch.setattr(retrieve_cli, name, lambda config, name=name: seen.append((name, type(config))))
    for command in ("query", "distill", "build"):
        check_retrieval_options(*parse(MINIMAL[command]))
    assert seen == [("check_query", QueryConfig), ("check_distill", DistillConfig), ("check_build", BuildConfig)]

"""Configuration: defaults < TOML file < command line, and errors that name the option."""

import pytest

from mpigd.config import TrainConfig, build, load_file, parse_straggler
from mpigd.errors import MpigdError


def test_file_then_command_line(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('iters = 50\nlr = 0.01\nx-dataset = "features"\nstandardize = true\n')
    config = build(load_file(path), {"iters": "7"})
    assert config.iters == 7 and config.lr == 0.01 and config.x_dataset == "features"
    assert config.standardize and config.y_dataset == TrainConfig().y_dataset


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("iterations = 5\n")
    with pytest.raises(MpigdError, match="unknown key 'iterations'"):
        load_file(path)


@pytest.mark.parametrize("text,key", [('iters = "many"', "iters"), ("quiet = 1", "quiet"),
                                      ("lr = true", "lr"), ("tol = [1]", "tol")])
def test_wrong_type_is_named(tmp_path, text, key):
    path = tmp_path / "run.toml"
    path.write_text(text + "\n")
    with pytest.raises(MpigdError, match=f"key '{key}' must be"):
        load_file(path)


def test_bad_toml_and_missing_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("iters = = 3\n")
    with pytest.raises(MpigdError, match="not valid TOML"):
        load_file(path)
    with pytest.raises(MpigdError, match="cannot read config file"):
        load_file(tmp_path / "absent.toml")


@pytest.mark.parametrize("options,message", [
    ({"lr": "0"}, "--lr must be > 0"),
    ({"lr": "-1"}, "--lr must be > 0"),
    ({"lr": "fast"}, "--lr must be a number"),
    ({"lr": "nan"}, "--lr must be finite"),
    ({"iters": "0"}, "--iters must be >= 1"),
    ({"iters": "1.5"}, "--iters must be a whole number"),
    ({"tol": "-1"}, "--tol must be >= 0"),
    ({"threads": "0"}, "--threads must be >= 1"),
    ({"straggler": "1"}, "--straggler must look like RANK:SECONDS"),
    ({"straggler": "a:1"}, "--straggler must look like RANK:SECONDS"),
    ({"straggler": "1:-2"}, "SECONDS must be >= 0"),
    ({"straggler": "1:x"}, "--straggler SECONDS must be a number"),
])
def test_validation_messages(options, message):
    with pytest.raises(MpigdError, match=message):
        build({}, options)


def test_straggler_parses():
    assert parse_straggler("3:0.25") == (3, 0.25)
    assert build({}, {"lr": "0.5"}).lr == 0.5
    assert build({}, {}).lr == "auto"


def test_every_mistake_of_a_config_file_is_reported_at_once(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('iterations = 5\nlearning_rate = 0.1\niters = "50"\nquiet = 1\n')
    with pytest.raises(MpigdError) as caught:
        load_file(path)
    message = str(caught.value)
    assert message.count("config file") == 1
    for part in ("unknown keys 'iterations', 'learning_rate'", "key 'iters' must be an integer",
                 "key 'quiet' must be true/false"):
        assert part in message, message

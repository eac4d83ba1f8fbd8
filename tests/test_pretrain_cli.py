"""Command lines of the pretraining entry points: LeRobot's parser (``--config_path`` with a file or a shipped
preset name, later flags override it) plus the spellings the README documents (dashes, bare booleans)."""

import pytest
from lerobot_defi.presets import preset_path

from lerobot_defi.command_line import CommandLineError
from lerobot_defi.pretrain.gidm.config import GIDMTrainConfig
from lerobot_defi.pretrain.shared.cli import normalise_cli_args, parse_config


def test_dashes_and_bare_booleans_become_draccus_flags():
    args = ["--push-to-hub", "--output-dir=a-b", "--datasets", "[x]", "--resume", "--help"]
    assert normalise_cli_args(args) == [
        "--push_to_hub=true",
        "--output_dir=a-b",
        "--datasets",
        "[x]",
        "--resume=true",
        "--help",
    ]


def test_config_path_takes_a_preset_name_or_a_file_and_flags_override_it(tmp_path):
    by_name = parse_config(GIDMTrainConfig, ["--config-path=gidm_tiny.yaml", "--steps=7", "--resume"])
    by_file = parse_config(GIDMTrainConfig, [f"--config_path={preset_path('gidm_tiny.yaml')}", "--steps=7"])
    assert by_name.steps == by_file.steps == 7 and by_name.resume and not by_file.resume
    assert by_name.model == by_file.model and by_name.model.model_dim == 32  # from the preset
    assert parse_config(GIDMTrainConfig, []).model.model_dim == 768  # no preset: the official defaults
    with pytest.raises(
        CommandLineError, match=r"no_such.yaml: no such file \(nor a preset in .*gidm_tiny.yaml"
    ):
        parse_config(GIDMTrainConfig, ["--config_path=no_such.yaml"])


def test_a_config_error_names_the_problem():
    with pytest.raises(CommandLineError, match="not both"):
        parse_config(GIDMTrainConfig, ["--datasets=[{repo_id: x, gap: 3, gap_range: [2, 4]}]"])
    with pytest.raises(CommandLineError, match=r"^--steps: Couldn't parse 'many' into an int$"):
        parse_config(GIDMTrainConfig, ["--steps=many"])


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as done:
        parse_config(GIDMTrainConfig, ["--help"])
    assert done.value.code == 0 and "--codebook_reset_every" in capsys.readouterr().out

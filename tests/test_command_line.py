"""One command-line dialect for every command of the package, LeRobot's (draccus): ``--name=value``, lists as
``'[a,b]'``, ``null`` for None; bad options end with one ``error:`` line and exit status 2."""

import logging
import os
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from defi_test_utils import REPO_DIR, error_line
from lerobot_defi.conversions.calvin import CalvinConvertConfig
from lerobot_defi.conversions.cli import main as convert_cli
from lerobot_defi.conversions.vpp import VPPConvertConfig, VPPExportConfig

from lerobot_defi.command_line import CommandLineError, parse_command_line, parse_lerobot_command_line
from lerobot_defi.official.cli import main as import_official


def test_values_lists_and_null_parse_as_in_lerobot():
    cfg = parse_command_line(
        VPPConvertConfig,
        [
            "--raw_dir=/data/vpp/bridge",
            "--repo_id=me/b",
            "--splits=[train,val]",
            "--image_size=null",
            "--skip_bad=true",
        ],
        prog="test",
    )
    assert (cfg.splits, cfg.image_size, cfg.skip_bad, cfg.num_workers) == (["train", "val"], None, True, 0)
    cfg = parse_command_line(
        VPPConvertConfig, ["--raw_dir=x", "--repo_id=me/b", "--image_size=[64,32]"], "test"
    )
    assert cfg.image_size == (64, 32)
    export = parse_command_line(
        VPPExportConfig, ["--repo_id=me/c", "--output_dir=out", "--cameras=[static,gripper]"], "test"
    )
    assert export.cameras == ["static", "gripper"] and export.split == "train"
    assert parse_command_line(CalvinConvertConfig, ["--raw_dir=x", "--repo_id=me/c"], "test").num_workers == 2
    with pytest.raises(CommandLineError, match=r"--layout must be one of \['windows', 'play'\], got 'wide'"):
        parse_command_line(CalvinConvertConfig, ["--raw_dir=x", "--repo_id=me/c", "--layout=wide"], "test")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--raw_dir=x"], "repo_id"),
        (["--raw_dir=x", "--repo_id=me/c", "--max_episodes=many"], "max_episodes"),
        (["--raw_dir=x", "--repo_id=me/c", "--scene=E"], "--scene must be one of"),
    ],
)
def test_bad_options_are_one_error_line_and_exit_status_2(options, message, capsys):
    assert convert_cli(["calvin", *options]) == 2
    assert message in error_line(capsys.readouterr().err)


def test_help_lists_the_options_with_their_comments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_cli(["oxe", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "lerobot-defi-convert oxe" in out
    assert "--raw_dir" in out and "--keep_unlabeled" in out and "Verify the TFRecord CRCs" in out


def test_importer_options_are_checked_before_anything_is_read(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        import_official(["gfdm", f"--folder={tmp_path}", "--push_to_hub=true"])
    assert exit_info.value.code == 2
    assert (
        error_line(capsys.readouterr().err)
        == "error: --push_to_hub=true needs --output (the folder to upload)"
    )
    with pytest.raises(SystemExit) as exit_info:
        import_official(["policy", f"--stage3={tmp_path / 'last.pt'}", f"--output={tmp_path / 'out'}"])
    assert exit_info.value.code == 2 and "gfdm" in error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_info:
        import_official(["stage4"])
    assert exit_info.value.code == 2 and "unknown subcommand 'stage4'" in capsys.readouterr().err


@dataclass
class NoisyConfig:
    """A config whose check prints while it is parsed, on ``sys.stderr`` and on file descriptor 2."""

    steps: int = 1

    def __post_init__(self):
        print("a warning while parsing", file=sys.stderr)
        os.write(2, b"written on fd 2\n")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")


def test_lerobot_parser_errors_are_one_line_and_what_parsing_prints_is_kept_back(capsys):
    """LeRobot's parser reports a bad type itself (exit 1) and lets a config's check through as a traceback; both
    become one CommandLineError, and what parsing printed is shown only when the command line is good."""
    assert parse_lerobot_command_line(NoisyConfig, ["--steps=2"], "noisy").steps == 2
    assert capsys.readouterr().err == "a warning while parsing\nwritten on fd 2\n"
    with pytest.raises(CommandLineError, match=r"^--steps must be >= 1, got 0$"):
        parse_lerobot_command_line(NoisyConfig, ["--steps=0"], "noisy")
    with pytest.raises(CommandLineError, match=r"^--steps: Couldn't parse 'x' into an int$"):
        parse_lerobot_command_line(NoisyConfig, ["--steps=x"], "noisy")
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as exit_info:
        parse_lerobot_command_line(NoisyConfig, ["--help"], "noisy")
    assert exit_info.value.code == 0 and "--steps" in capsys.readouterr().out


@dataclass
class LoggingConfig:
    """A config whose check logs a warning through the root logger."""

    steps: int = 1

    def __post_init__(self):
        logging.warning("logged while parsing")


def test_a_root_handler_configured_while_parsing_writes_to_the_real_stderr(capsys):
    """``logging.warning`` with no root handler configures one on ``sys.stderr``: made while stderr is kept back,
    it must not keep writing into the buffer afterwards."""
    root = logging.getLogger()
    root.handlers[:] = []  # put back by tests/conftest.py
    parse_lerobot_command_line(LoggingConfig, [], "logging")
    assert capsys.readouterr().err == "WARNING:root:logged while parsing\n"
    logging.warning("logged after parsing")
    assert capsys.readouterr().err == "WARNING:root:logged after parsing\n"


# Every console script of pyproject.toml and every documented `python -m` command, with a bad value: a wrong type,
# an invalid choice or a value the config's own check refuses.
PYTHON_M = [sys.executable, "-m"]
BAD_VALUES = {
    "lerobot-defi-demo": (["--steps=0"], "error: --steps must be >= 1, got 0"),
    "lerobot-defi-convert": (
        ["calvin", "--raw_dir=x", "--repo_id=me/c", "--layout=wide"],
        "error: --layout must be one of ['windows', 'play'], got 'wide'",
    ),
    "lerobot-defi-train-gfdm": (
        ["--config_path=gfdm_tiny.yaml", "--output_dir={tmp}/gfdm", "--datasets=[]"],
        "error: give at least one dataset: --datasets='[{repo_id: ..., root: ...}]' or a config file",
    ),
    "lerobot-defi-train-gidm": (
        ["--config_path=gidm_tiny.yaml", "--steps=many"],
        "error: --steps: Couldn't parse 'many' into an int",
    ),
    "lerobot-defi-eval-calvin": (["--num_workers=0"], "error: --num_workers must be >= 1, got 0"),
    "lerobot-defi-record-calvin": (
        ["--repo_id=x/y", "--tasks=[not_a_task]"],
        "error: --tasks: the expert has no skill for ['not_a_task']; recordable tasks: open_drawer, ",
    ),
    "lerobot-defi-import-official": (
        ["gidm", "--push_to_hub=maybe"],
        "error: --push_to_hub: Couldn't parse 'maybe' into a bool",
    ),
    "lerobot_defi.envs.check_calvin_install": (
        ["--renderer=opengl"],
        "error: --renderer must be one of ['auto', 'egl', 'tiny'], got 'opengl'",
    ),
    "lerobot_defi.pretrain.gidm.inspection": (
        ["--model_path=x", "--datasets=[{repo_id: a/b}]", "--num_pairs=0"],
        "error: --num_pairs and --batch_size must be >= 1, got 0, 16",
    ),
}


@pytest.fixture(scope="module")
def bad_value_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every command of BAD_VALUES run once, side by side, in a fresh process."""
    tmp = tmp_path_factory.mktemp("bad_values")
    bin_dir = Path(sys.executable).parent

    def run(name: str) -> subprocess.CompletedProcess:
        options = [option.replace("{tmp}", str(tmp)) for option in BAD_VALUES[name][0]]
        command = [*PYTHON_M, name] if "." in name else [str(bin_dir / name)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [*command, *options], cwd=tmp, env=env, capture_output=True, text=True, timeout=300
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(BAD_VALUES, pool.map(run, BAD_VALUES), strict=True))


def test_every_console_script_has_a_bad_value_case():
    scripts = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) <= set(BAD_VALUES), sorted(set(scripts) - set(BAD_VALUES))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_every_entry_point_answers_a_bad_value_with_one_error_line(name, bad_value_runs):
    result = bad_value_runs[name]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(BAD_VALUES[name][1]), result.stderr[-3000:]

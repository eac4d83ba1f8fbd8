"""One command-line dialect for every command of the package, LeRobot's (draccus): ``--name=value``, lists as
``'[a,b]'``, ``null`` for None; bad options end with one ``error:`` line and exit status 2."""

import pytest
from defi_test_utils import error_line
from lerobot_defi.conversions.calvin import CalvinConvertConfig
from lerobot_defi.conversions.cli import main as convert_cli
from lerobot_defi.conversions.vpp import VPPConvertConfig, VPPExportConfig

from lerobot_defi.command_line import CommandLineError, parse_command_line
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

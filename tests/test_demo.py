"""The demo's plumbing (fast): its lerobot-train environment and the progress it reads from the log.
The demo itself runs end to end in test_cli_end_to_end.py."""

from lerobot_defi.conversions.video_backend import describe_video_backend, video_backend

from lerobot_defi.demo import TRAINING_BAR, DemoConfig, main, training_env


def test_training_runs_with_one_torch_thread_unless_the_user_chose():
    env = training_env({"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    env = training_env({"OMP_NUM_THREADS": "4"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4"


def test_progress_is_read_from_lerobot_trains_own_bar():
    log = "INFO ...\rTraining:   6%|▌         | 12/200 [00:44<20:36,  6.58s/step]\rTraining:  10%|█  | 20/200 [00:52"
    assert TRAINING_BAR.findall(log)[-1] == ("20", "200")


def test_video_backend_is_one_line_with_a_reason():
    backend, why = video_backend()
    assert backend in ("torchcodec", "pyav") and why
    line = describe_video_backend()
    assert line.startswith(f"video decoding: {backend} (") and "\n" not in line


def test_command_line_is_lerobots_dialect(capsys):
    """``--raw_dir`` / ``--output_dir`` / ``--steps`` as draccus options; a bad value is one ``error:`` line."""
    from lerobot_defi.command_line import parse_command_line

    cfg = parse_command_line(DemoConfig, ["--output_dir=/tmp/x", "--steps=3"], prog="lerobot-defi-demo")
    assert str(cfg.output_dir) == "/tmp/x" and cfg.steps == 3 and cfg.raw_dir is None
    assert main(["--steps=0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --steps must be >= 1, got 0"

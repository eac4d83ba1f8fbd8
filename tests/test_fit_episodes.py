"""benchmarks/fit_episodes.py end to end: lerobot-train on one recorded episode with written stand-in components,
then the fit report of every checkpoint in fit.json."""

import json
import shutil
import subprocess
import sys

import pytest
from defi_test_utils import REPO_DIR, TESTS_DIR

EPISODE = TESTS_DIR / "data" / "calvin_expert_open_drawer"


@pytest.mark.slow
def test_fit_episodes_trains_with_stand_ins_and_reports_every_checkpoint(tmp_path):
    root = tmp_path / "dataset"
    shutil.copytree(EPISODE, root)
    out = tmp_path / "fit"
    command = [
        sys.executable, str(REPO_DIR / "benchmarks" / "fit_episodes.py"), f"--dataset_root={root}",
        "--dataset_repo_id=local/calvin_expert_open_drawer", f"--output_dir={out}", "--steps=4", "--batch_size=4",
        "--checkpoints=2", "--stand_in_components=tiny", "--extra=[--num_workers=0]",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    fit = json.loads((out / "fit.json").read_text())
    # The stand-ins were written and passed by path, after the preset and before the extra options.
    components = out / "components"
    assert f"--policy.gfdm_path={components / 'svd_init'}" in fit["command"]
    assert (components / "svd_init" / "vae" / "config.json").is_file() and (components / "t5").is_dir()
    assert fit["command"][-1] == "--num_workers=0"
    # One report per saved checkpoint, on the frames samples start from (the tiny preset drops its last 9 of 34).
    assert [c["step"] for c in fit["checkpoints"]] == [2, 4]
    for report in fit["checkpoints"]:
        assert report["frames"] == 34 - 9
        assert report["ratio"] == pytest.approx(report["open_loop_error"] / report["mean_action_error"])

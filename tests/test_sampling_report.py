"""What ``drop_n_last_frames`` leaves for training to sample, said at the start of training
(lerobot_defi/policy/sampling_report.py), on tiny synthetic dataset metadata."""

import logging
import sys
from types import SimpleNamespace

import pytest
from datasets import Dataset
from defi_test_utils import tiny_config

from lerobot_defi.policy.modeling_defi import DeFIPolicy
from lerobot_defi.policy.sampling_report import (
    UnsampleableDataError,
    check_sampleable_frames,
    command_line_episodes,
    sampling_report,
)

# Two drawer episodes, two LED demonstrations of about 20 frames (CALVIN's), one push.
LENGTHS = [30, 25, 20, 18, 40]
TASKS = [
    ["open the drawer"],
    ["open the drawer"],
    ["turn on the led"],
    ["turn on the led"],
    ["push the block"],
]


def dataset_meta(lengths: list[int], tasks: list[list[str]]) -> SimpleNamespace:
    """What the check reads of a ``LeRobotDatasetMetadata``: its ``meta/episodes`` table."""
    ends = [sum(lengths[: i + 1]) for i in range(len(lengths))]
    table = Dataset.from_dict(
        {
            "episode_index": list(range(len(lengths))),
            "tasks": tasks,
            "length": lengths,
            "dataset_from_index": [end - length for end, length in zip(ends, lengths, strict=True)],
            "dataset_to_index": ends,
        }
    )
    return SimpleNamespace(episodes=table)


def test_frames_and_episodes_are_counted_per_task():
    report = sampling_report(LENGTHS, TASKS, drop_n_last_frames=20)
    assert (report.total.episodes, report.total.frames, report.total.sampleable_frames) == (5, 133, 35)
    assert report.total.lost_episode_lengths == [20, 18]
    by_name = {task.name: task for task in report.tasks}
    assert (by_name["open the drawer"].frames, by_name["open the drawer"].sampleable_frames) == (55, 15)
    assert by_name["turn on the led"].sampleable_frames == 0 and by_name["turn on the led"].lost_episodes == 2
    assert [task.name for task in report.vanished_tasks] == ["turn on the led"]
    text = report.format()
    assert text.startswith(
        "drop_n_last_frames=20: training samples start from 35 of 133 frames (26%) of 5 episodes; "
        "2 episode(s) of at most 20 frames give none"
    )
    rows = {line[2:17].strip(): line[17:].split() for line in text.splitlines()[2:]}
    assert rows == {
        "open the drawer": ["2", "55", "15", "0"],
        "push the block": ["1", "40", "20", "0"],
        "turn on the led": ["2", "38", "0", "2", "<-", "no", "frame", "left"],
    }


def test_a_vanishing_task_stops_with_its_lengths_and_the_fix():
    with pytest.raises(UnsampleableDataError) as error:
        sampling_report(LENGTHS, TASKS, drop_n_last_frames=20).check()
    message = str(error.value)
    assert message.startswith(
        "--policy.drop_n_last_frames=20 leaves no frame to train on for 1 task(s): "
        "'turn on the led' (2 episode(s) of 18-20 frames)"
    )
    assert "--policy.drop_n_last_frames=19" in message and "--dataset.episodes" in message
    fixed = sampling_report(LENGTHS, TASKS, drop_n_last_frames=19)
    fixed.check()  # the suggested value keeps a frame of the task's longest episode
    assert fixed.vanished_tasks == [] and fixed.total.lost_episode_lengths == [18]
    everything = sampling_report(LENGTHS, TASKS, drop_n_last_frames=0).format()
    assert everything == (
        "drop_n_last_frames=0: training samples start from 133 of 133 frames (100%) of 5 episodes; "
        "every episode gives some"
    )


def test_a_vanishing_dataset_without_tasks_stops_too():
    report = sampling_report([5, 8], None, drop_n_last_frames=20)
    assert report.tasks == [] and "task" not in report.format()
    with pytest.raises(
        UnsampleableDataError, match=r"the whole dataset \(2 episode\(s\) of 5-8 frames\)"
    ) as error:
        report.check()
    assert "--policy.drop_n_last_frames=7" in str(error.value)
    sampling_report([5, 8], None, drop_n_last_frames=7).check()


def test_the_report_is_logged_and_only_the_selected_episodes_count(caplog):
    meta = dataset_meta(LENGTHS, TASKS)
    with caplog.at_level(logging.INFO, logger="lerobot_defi.policy.sampling_report"):
        check_sampleable_frames(meta, 20, episodes=[0, 1, 4])  # the LED demonstrations are not trained on
    assert caplog.records[-1].levelno == logging.INFO
    assert (
        "training samples start from 35 of 95 frames (37%) of 3 episodes; every episode gives some"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lerobot_defi.policy.sampling_report"):
        check_sampleable_frames(meta, 19, episodes=[0, 2, 3])  # one LED demonstration keeps a frame
    assert caplog.records[-1].levelno == logging.WARNING
    assert "start from 12 of 68 frames (18%) of 3 episodes; 1 episode(s) of at most 19" in caplog.text
    with pytest.raises(UnsampleableDataError, match="'turn on the led'"):
        check_sampleable_frames(meta, 20)
    check_sampleable_frames(SimpleNamespace(episodes=None), 20)  # an empty dataset: nothing to say


def test_the_selection_is_read_from_lerobots_command_line_or_its_config_file(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["lerobot-train", "--dataset.repo_id=x/y", "--dataset.episodes=[0, 2]"])
    assert command_line_episodes() == [0, 2]
    monkeypatch.setattr(sys, "argv", ["lerobot-train", "--dataset.repo_id=x/y"])
    assert command_line_episodes() is None
    saved = tmp_path / "train_config.json"  # what --resume=true reads
    saved.write_text('{"dataset": {"repo_id": "x/y", "episodes": [1, 3]}, "policy": {"type": "defi"}}')
    monkeypatch.setattr(sys, "argv", ["lerobot-train", f"--config_path={saved}", "--resume=true"])
    assert command_line_episodes() == [1, 3]
    monkeypatch.setattr(sys, "argv", ["lerobot-train", f"--config_path={saved}", "--dataset.episodes=[4]"])
    assert command_line_episodes() == [4]


def test_the_policy_checks_the_dataset_lerobot_train_gives_it(monkeypatch, caplog):
    monkeypatch.setattr(sys, "argv", ["lerobot-train"])
    config = tiny_config()  # the tiny preset: drop_n_last_frames 9
    with pytest.raises(UnsampleableDataError, match=r"drop_n_last_frames=9 .* 'turn on the led' \(2 episode"):
        DeFIPolicy(config, dataset_meta=dataset_meta([30, 25, 9, 8, 40], TASKS))
    with caplog.at_level(logging.INFO, logger="lerobot_defi.policy.sampling_report"):
        DeFIPolicy(config, dataset_meta=dataset_meta(LENGTHS, TASKS))
    assert "drop_n_last_frames=9: training samples start from 88 of 133 frames" in caplog.text

"""The multi-GPU benchmark's log parsing and loss-curve comparison (the launches themselves are the DDP tests of
test_cli_end_to_end / test_train_gfdm / test_train_gidm and the benchmark's own runs)."""

import json
import math
import sys

import pytest
from defi_test_utils import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
from bench_multi_gpu import (
    compare_curves,
    error_summary,
    median_rate,
    parse_lerobot_log,
    parse_metrics_jsonl,
)


def test_parses_lerobot_train_lines_into_losses_and_samples_per_second():
    text = (
        "INFO 2026-12-01 ot_train.py:410 step:1 smpl:8 ep:0 epch:0.08 loss:1.250 grdn:3.1 lr:1.0e-04 "
        "updt_s:0.150 data_s:0.050\n"
        "some other line loss:9\n"
        "INFO 2026-12-01 ot_train.py:410 step:2 smpl:16 ep:0 epch:0.17 loss:0.875 grdn:2.0 lr:1.0e-04 "
        "updt_s:0.300 data_s:0.100\n"
    )
    steps, losses, rates = parse_lerobot_log(text, global_batch=8)
    assert steps == [1, 2]
    assert losses == [1.25, 0.875]
    assert rates == pytest.approx([8 / 0.2, 8 / 0.4])


def test_parses_only_training_lines_of_metrics_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"step": 1, "loss": 2.0, "samples_per_s": 10.0},
        {"step": 1, "val_loss": 3.0},
        {"step": 2, "loss": 1.5, "samples_per_s": 30.0, "codes_reset": 1},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert parse_metrics_jsonl(path) == ([1, 2], [2.0, 1.5], [10.0, 30.0])


def test_median_rate_leaves_out_warmup_and_non_finite_steps():
    assert median_rate([1.0, 100.0, 10.0, math.nan, 30.0], warmup=1) == 30.0
    assert median_rate([5.0], warmup=1) is None


def test_identical_up_to_reduction_order_curves_match():
    reference = [3.0, 2.5, 2.0, 1.8]
    result = compare_curves(reference, [v * (1 + 1e-5) for v in reference])
    assert result["match"] and result["steps"] == 4
    assert result["max_relative_difference"] == pytest.approx(1e-5, rel=1e-3)


def test_curves_with_noise_around_zero_match_and_a_shifted_curve_does_not():
    reference = [2.0, 1.9, 1.7, 1.6, 1.5, 1.45, 1.4, 1.3]
    noise = [0.05, -0.04, 0.03, -0.05, 0.04, -0.03, 0.05, -0.04]
    assert compare_curves(reference, [r + n for r, n in zip(reference, noise)])["match"]
    shifted = compare_curves(reference, [r + 0.3 + n / 10 for r, n in zip(reference, noise)])
    assert not shifted["match"]
    assert shifted["mean_difference"] == pytest.approx(0.3, abs=0.01)


def test_too_short_curves_do_not_match():
    assert not compare_curves([1.0], [1.0])["match"]


def test_error_summary_names_the_root_cause_not_the_launcher():
    text = (
        "Traceback (most recent call last):\n"
        "ValueError: the mixture has 90 pairs, 45 per process: fewer than one batch of 64\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "=====\n"
    )
    assert error_summary(text).startswith("ValueError: the mixture has 90 pairs")
    assert error_summary("just\nlast line\n") == "last line"

"""The compiled-start benchmark's "same action" check: a stated tolerance, the differences it saw, and the
compiled-vs-eager gap beside them (the start processes themselves are the benchmark's own runs)."""

import sys

from defi_test_utils import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
from bench_compiled_start import (
    compare_starts,
    default_action_atol,
    first_action_phases,
    import_seconds_by_package,
    max_abs_difference,
    profile_imports,
)


def start(chunk: list, eager_gap: float) -> dict:
    return {"chunk": [chunk], "eager_vs_compiled_max_abs": eager_gap}


def test_starts_within_tolerance_are_the_same_action_and_the_report_says_how_close():
    runs = [
        ("cold", start([[0.5, -0.25]], 0.002)),
        ("warm 1", start([[0.5035, -0.25]], 0.003)),
        ("warm 2", start([[0.5, -0.252]], 0.001)),
    ]
    comparison = compare_starts(runs, atol=1e-2)
    assert [r["same"] for r in comparison["runs"].values()] == [True, True, True]
    assert comparison["runs"]["warm 1"]["max_abs_diff_to_cold"] == max_abs_difference([0.5035], [0.5])
    assert comparison["runs"]["warm 2"]["eager_vs_compiled_max_abs"] == 0.001
    assert comparison["verdict"] == (
        "same action: every start is within 0.01 of the cold start (max |difference| 0.0035); "
        "compiled vs eager on the same inputs: up to 0.003"
    )


def test_a_start_beyond_tolerance_is_a_mismatch_shown_against_the_eager_gap():
    runs = [("cold", start([[0.5, -0.25]], 0.002)), ("warm 1", start([[0.9, -0.25]], 0.002))]
    comparison = compare_starts(runs, atol=1e-2)
    assert comparison["runs"]["warm 1"]["same"] is False
    assert comparison["verdict"] == (
        "MISMATCH: warm 1 differs from the cold start by up to 0.4 > tolerance 0.01 "
        "(compiled vs eager on the same inputs: up to 0.002)"
    )


def test_default_tolerance_is_float32_on_the_cpu_and_bf16_on_a_gpu():
    assert default_action_atol("cpu") == 1e-4
    assert default_action_atol("cuda") == default_action_atol("cuda:0") == 1e-2


def test_first_action_seconds_are_split_into_the_entry_steps_and_the_rest():
    report = {
        "seconds": {"imported": 12.0, "loaded": 16.0, "first_action": 36.5},
        "entry_seconds": {"key": 0.5, "load": 2.0, "call": 15.0, "save": 0.0},
        "compile_phases": {"dynamo": 14.0, "tracing": 6.0, "backend": 7.5, "cache_load": 7.0, "guards": 0.5},
    }
    split = first_action_phases(report)
    assert split["total"] == 20.5
    assert split["other"] == 3.0  # 20.5 - (0.5 + 2 + 15 + 0): inputs, eager parts, CUDA-graph capture
    assert (
        split["entry_call"] == 15.0 and split["compile_tracing"] == 6.0 and split["compile_cache_load"] == 7.0
    )
    # a start without a cache entry (compile_cache_dir=off) has only the total and the rest
    bare = first_action_phases({"seconds": report["seconds"]})
    assert bare == {"other": 20.5, "total": 20.5}


IMPORTTIME = """import time: self [us] | cumulative | imported package
import time:       120 |        120 |   _io
import time:      2000 |       2000 |       torch._C
import time:      1500 |       3500 |     torch.nn
import time:     40000 |      43500 |   torch
import time:       300 |        300 |       lerobot.configs
import time:      9700 |      10000 |   lerobot
some other line on stderr
"""


def test_import_seconds_are_summed_per_top_level_package():
    seconds = import_seconds_by_package(IMPORTTIME, top=2)
    assert seconds == {"torch": 0.04, "lerobot": 0.01, "other": 0.0, "total": 0.05}
    assert list(seconds)[:2] == ["torch", "lerobot"]  # largest first


def test_a_start_s_imports_are_profiled_in_a_process_of_their_own():
    """The real profile of what a start imports (lerobot, torch, this package): the packages are named."""
    import os

    seconds = profile_imports(dict(os.environ, HF_HUB_OFFLINE="1"), top=1000)
    assert {"torch", "lerobot", "lerobot_defi"} <= set(seconds)
    assert seconds["total"] > seconds["torch"] > 0 and seconds["wall"] >= seconds["total"] * 0.5

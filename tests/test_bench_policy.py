"""The policy benchmark's table and its FP8 error measurement (the timings themselves are the benchmark's runs:
``--tiny=true`` on the CPU, the official size on a GPU)."""

import sys

import torch
from defi_test_utils import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
from bench_policy import Results, build_policy, measure_fp8_errors, summary_table

GPU_RESULTS = {
    "setup": {
        "device_name": "NVIDIA H100 80GB HBM3",
        "torch": "2.11.0",
        "tiny": False,
        "compile_mode": "reduce-overhead",
        "reference_gfdm_dtype": "float16",
        "fast_gfdm_dtype": "bfloat16",
    },
    "start": {
        "cold": {"imports_s": 13.3, "loaded_s": 17.4, "first_action_s": 184.3, "compile_s": 166.9},
        "warm 1": {"imports_s": 13.1, "loaded_s": 17.0, "first_action_s": 37.7, "compile_s": 20.7},
        "warm 2": {"imports_s": 13.3, "loaded_s": 17.4, "first_action_s": 37.8, "compile_s": 20.4},
        "action_atol": 0.01,
        "verdict": "same action: every start is within 0.01 of the cold start (max |difference| 0.0035); "
        "compiled vs eager on the same inputs: up to 0.004",
    },
    "inference_reference": {"batch1_median_ms": 113.7, "batch1_p90_ms": 114.4, "batch8_chunks_per_s": 26.5},
    "inference_fast": {"batch1_median_ms": 28.68, "batch1_p90_ms": 28.76, "batch8_chunks_per_s": 52.3},
    "inference_fp8": {"batch1_median_ms": 20.0, "batch1_p90_ms": 20.5, "batch8_chunks_per_s": 70.0},
    "training_reference": {"batch8_samples_per_s": 23.73},
    "training_fast": {"batch8_samples_per_s": 35.58},
    "training_fp8": {"batch8_samples_per_s": 47.46},
    "best_batch_fast": {"batch_size": 64, "samples_per_s": 40.1},
    "fp8_flops": {"fp8_share": 0.6054},
    "fp8_errors": {
        "features_fp8_vs_bf16_relative_rms": 0.03,
        "features_fp8_vs_bf16_max_abs": 0.5,
        "features_fp16_reference_vs_bf16_relative_rms": 0.004,
        "chunk_fp8_vs_bf16_max_abs": 0.02,
        "chunk_bf16_compiled_vs_eager_max_abs": 0.004,
        "chunk_reference_vs_bf16_max_abs": 0.006,
    },
}


def table_rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| |"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_table_puts_reference_fast_and_fp8_side_by_side():
    table = summary_table(GPU_RESULTS)
    assert table.startswith("| | reference | fast, reduce-overhead | fast, reduce-overhead + FP8 |")
    rows = table_rows(table)
    assert rows["batch-1 chunk, median (p90) ms"] == ["113.7 (114.4)", "28.68 (28.76)", "20.0 (20.5)"]
    assert rows["batch-8 chunks/s"] == ["26.5", "52.3", "70.0"]
    assert rows["training, batch 8, samples/s (× reference)"] == ["23.73", "35.58 (1.50×)", "47.46 (2.00×)"]
    assert rows["training, best batch that fits, samples/s"] == ["—", "40.1 (batch 64)", "—"]
    assert rows["GFDM features vs bf16: relative RMS (max abs)"] == ["0.004", "baseline", "0.03 (0.5)"]
    assert rows["action chunk vs bf16 compiled: max abs"] == ["0.006", "0.004 (its eager path)", "0.02"]
    assert rows["share of the UNet's FLOPs in FP8"] == ["0", "0", "60.5 %"]
    assert rows["first action, cold / warm start, s"] == ["—", "184.3 / 37.7, 37.8", "—"]
    assert rows["warm start: imports + load + compile, s"] == ["—", "13.3 + 4.1 + 20.4", "—"]
    assert "warm vs cold start: same action: every start is within 0.01" in table
    assert "NVIDIA H100 80GB HBM3, torch 2.11.0, official size" in table


def test_table_says_why_fp8_is_missing():
    results = {
        "setup": {"device_name": "cpu", "tiny": True, "compile_mode": None},
        "inference_fast": {"batch1_median_ms": 281.3, "batch1_p90_ms": 290.0},
        "fp8_flops": {"fp8_share": 0.6464},
        "fp8": {"not_available": "FP8 matrix products need a CUDA GPU ...; the device is cpu"},
    }
    table = summary_table(results)
    rows = table_rows(table)
    assert table.startswith("| | reference | fast, eager | fast, eager + FP8 |")
    assert rows["batch-1 chunk, median (p90) ms"] == ["—", "281.3 (290.0)", "n/a ¹"]
    assert rows["share of the UNet's FLOPs in FP8"][2] == "64.6 %"  # counted, also where FP8 cannot run
    assert "¹ FP8 not available: FP8 matrix products need a CUDA GPU ...; the device is cpu" in table


def test_fp8_error_measurement_of_identical_paths_is_zero():
    """The error rows compare what they say: three identical tiny policies give exact zeros."""
    fast, twin, reference = (build_policy(True, "cpu") for _ in range(3))
    twin.load_state_dict(fast.state_dict())
    report = Results(None, {})
    measure_fp8_errors(reference, fast.eval(), twin.eval(), 1, "cpu", report, draws=1)
    errors = report.data["fp8_errors"]
    assert errors["batch_size"] == 1
    for name in (
        "features_fp8_vs_bf16_relative_rms",
        "features_fp8_vs_bf16_max_abs",
        "chunk_fp8_vs_bf16_max_abs",
        "chunk_bf16_compiled_vs_eager_max_abs",
        "chunk_fp8_compiled_vs_eager_max_abs",
        "features_fp16_reference_vs_bf16_relative_rms",
        "chunk_reference_vs_bf16_max_abs",
    ):
        assert errors[name] == 0, name
    assert errors["features_bf16_max_abs"] > 0 and errors["chunk_bf16_max_abs"] > 0
    reference_state = reference.state_dict()  # given the fast path's weights first
    assert all(torch.equal(reference_state[k], v) for k, v in fast.state_dict().items())


def test_profile_families_of_the_h100_run_kernels():
    """Kernel names of the committed H100 run (benchmarks/results/gpu_bench_policy_2026-12-07/bench_policy.log) and
    two of inductor's (a GEMM template, an addmm epilogue): the fused FP8 quantization is its own family, not a
    matrix product."""
    from bench_gfdm_variants import kernel_family

    families = {
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_": "attention",
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT": "matmul",
        "nvjet_sm90_qqtst_128x128_128x6_1x2_h_bz_ovscale_bias_TNT": "matmul",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_ti": "convolution",
        "triton_red_fused__scaled_mm__to_copy_abs_amax_clamp_div_gelu_mul_sp": "fp8 activation quantization (triton)",
        "triton_poi_fused_gelu_mul_split_view_87": "triton (fused pointwise/norm)",
        "triton_poi_fused_addmm_gelu_3": "triton (fused pointwise/norm)",
        "triton_poi_fused_convolution_silu_147": "triton (fused pointwise/norm)",
        "triton_tem_fused_mm_0": "matmul",
        "Memset (Unknown)": "other",
    }
    assert {name: kernel_family(name) for name in families} == families


def test_docs_table_is_the_committed_h100_run_rendered():
    """docs/performance.md §2.1 shows the table ``summary_table`` makes of the committed JSON, as written on the
    H100 (no figure typed by hand)."""
    import json

    committed = REPO_DIR / "benchmarks" / "results" / "gpu_bench_policy_2026-12-07_run2" / "bench_policy.json"
    data = json.loads(committed.read_text())
    assert data["setup"]["device_name"] == "NVIDIA H100 80GB HBM3"
    table = summary_table(data).split("\n\n")[0]
    assert table in (REPO_DIR / "docs/performance.md").read_text()
    assert "| batch-1 chunk, median (p90) ms | 150.74 (181.68) | 28.12 (28.27) | 30.44 (30.54) |" in table
    assert "| training, best batch that fits, samples/s | — | 43.77 (batch 96) | — |" in table


def test_step_cost_split_of_two_batch_sizes():
    """fixed + per_sample * batch through both measured points: the committed H100 runs (run 2, batch 8: 24.99
    samples/s, batch 96: 43.77; run 3 with the compiled loss) and a step with no fixed cost."""
    import json

    from bench_policy import step_cost_split

    committed = REPO_DIR / "benchmarks" / "results" / "gpu_bench_policy_2026-12-07_run2" / "bench_policy.json"
    split = step_cost_split(json.loads(committed.read_text()), "fast")
    # 8 / 24.99 s = 320.1 ms, 96 / 43.77 s = 2193.3 ms: 21.29 ms per sample, 149.8 ms per step
    assert split == {
        "from_batches": [8, 96],
        "fixed_ms_per_step": 149.8,
        "ms_per_sample": 21.29,
        "fixed_share_at_batch8": 0.468,
        "samples_per_s_bound": 47.0,
    }
    # Run 3 (the compiled training loss, docs/performance.md §2.1) wrote its split; the figures recompute to it.
    run3 = REPO_DIR / "benchmarks" / "results" / "gpu_bench_training_2026-12-07_run3" / "bench_training.json"
    data = json.loads(run3.read_text())
    assert step_cost_split(data, "fast") == data["best_batch_fast"]["step_cost_split"]
    assert (data["best_batch_fast"]["step_cost_split"]["fixed_ms_per_step"], split["fixed_ms_per_step"]) == (
        61.8,
        149.8,
    )
    linear = {"training_x": {"batch8_samples_per_s": 100.0, "batch32_samples_per_s": 100.0}}
    linear["best_batch_x"] = {"batch_size": 32}
    assert step_cost_split(linear, "x")["fixed_ms_per_step"] == 0.0
    assert step_cost_split(linear, "y") is None


def test_dispatched_ops_counts_top_level_aten_calls():
    """Each op called from Python counts once; the ops it runs inside (``linear`` -> ``t``, ``addmm``) do not."""
    from bench_policy import dispatched_ops

    x, weight = torch.ones(2, 3), torch.ones(4, 3)
    assert dispatched_ops(lambda: x.add(1).mul(2)) == 2
    assert dispatched_ops(lambda: torch.nn.functional.linear(x, weight)) == 1
    assert dispatched_ops(lambda: None) == 0


def test_training_step_profile_reports_kernel_time_and_its_share_of_the_step():
    """The families' times add up to the reported total, and the share is that total over the step's wall time."""
    from bench_policy import profile_training_step

    report = Results(None, {})
    a = torch.ones(128, 128)
    profile_training_step(lambda: a @ a, "x", 8, 1000.0, "cpu", report)
    families = report.data["profile_training_x_batch8_ms_per_step"]
    total = families.pop("total")
    assert total > 0 and families
    assert abs(sum(families.values()) - total) < 0.01 * len(families) + 1e-9
    assert report.data["training_x"]["batch8_kernel_share_of_step"] == round(total / 1000.0, 3)

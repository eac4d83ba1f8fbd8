"""The planning and reporting of benchmarks/closed_loop_calvin.py (its stages run for real in the CPU smoke run
described in docs/closed_loop_calvin.md; here: what it would run, and what it reports from lerobot-eval outputs)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "closed_loop_calvin.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("closed_loop_calvin", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def option(command: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


def test_plan_orders_the_stages_and_gives_every_policy_the_same_data_and_budget(bench, tmp_path):
    config = bench.BenchmarkConfig(output_dir=str(tmp_path), steps=300, curve_points=3, batch_size=8)
    plan = {job.name: job for job in bench.Benchmark(config).jobs()}
    assert plan["record"].after == []
    assert set(plan["train_defi"].after) == {"record", "pretrain_gfdm", "pretrain_gidm"}
    for policy in ("defi_no_pretraining", "diffusion", "act"):
        assert plan[f"train_{policy}"].after == ["record"]
    for policy in bench.POLICIES:
        train = plan[f"train_{policy}"].command
        assert option(train, "steps") == "300" and option(train, "batch_size") == "8"
        assert option(train, "dataset.root") == str(tmp_path / "dataset")
        assert option(train, "save_freq") == "100"
        evals = sorted(name for name in plan if name.startswith(f"eval_{policy}_0"))
        assert evals == [f"eval_{policy}_{step:06d}" for step in (100, 200, 300)]
        final = plan[f"eval_{policy}_000300"]
        assert (
            final.priority < plan[f"eval_{policy}_000100"].priority
        )  # final checkpoints are evaluated first
        assert option(final.command, "eval.n_episodes") == "20"
        assert option(plan[f"eval_{policy}_000100"].command, "eval.n_episodes") == "5"
        assert option(final.command, "env.tasks") == "[" + ",".join(bench.BENCHMARK_TASKS) + "]"
        assert option(final.command, "env.camera_size") == "96"
    record = plan["record"].command
    assert option(record, "camera_size") == "96" and option(record, "renderer") == "tiny"
    assert not any(arg.startswith("--use_videos") for arg in record)  # videos: cheap to read in long chunks


def test_baselines_get_the_cameras_and_robot_state_but_not_the_scene_state(bench, tmp_path):
    plan = {job.name: job for job in bench.Benchmark(bench.BenchmarkConfig(output_dir=str(tmp_path))).jobs()}
    for policy in ("diffusion", "act"):
        command = plan[f"train_{policy}"].command
        inputs = json.loads(option(command, "policy.input_features"))
        assert set(inputs) == {"observation.images.static", "observation.images.gripper", "observation.state"}
        assert inputs["observation.images.static"]["shape"] == [3, 96, 96]
        assert option(command, "policy.pretrained_backbone_weights") == "null"
    defi = plan["train_defi"].command
    assert option(defi, "policy.gfdm_path") == str(tmp_path / "pretrain_gfdm" / "gfdm")
    assert option(defi, "policy.gidm_path") == str(tmp_path / "pretrain_gidm" / "model")
    scratch = plan["train_defi_no_pretraining"].command
    assert option(scratch, "policy.gfdm_path") == str(tmp_path / "components" / "svd_init")
    assert not any(arg.startswith("--policy.gidm_path") for arg in scratch)


def eval_info(successes: dict[str, list[bool]]) -> dict:
    """The layout of lerobot-eval's eval_info.json in the task-level mode."""
    return {
        "per_task": [
            {"task_group": "calvin_tasks", "task_id": task, "metrics": {"successes": values}}
            for task, values in successes.items()
        ],
        "overall": {"eval_s": 12.5},
    }


def test_results_summarise_each_checkpoint_per_task_and_plot(bench, tmp_path):
    config = bench.BenchmarkConfig(
        output_dir=str(tmp_path), steps=200, curve_points=2, policies=["defi", "act"]
    )
    benchmark = bench.Benchmark(config)
    for policy, step, successes in (
        ("defi", 100, {"open_drawer": [True, False], "turn_on_led": [False, False]}),
        ("defi", 200, {"open_drawer": [True, True, True, False], "turn_on_led": [True, False, False, False]}),
        ("act", 200, {"open_drawer": [False] * 4, "turn_on_led": [True, False, False, False]}),
    ):
        folder = tmp_path / "eval" / f"{policy}_{step:06d}"
        folder.mkdir(parents=True)
        (folder / "eval_info.json").write_text(json.dumps(eval_info(successes)))
    benchmark.finished = {"train_defi": {"seconds": 30.0}, "pretrain_gfdm": {"seconds": 5.0}}
    results = benchmark.write_results()
    defi = results["policies"]["defi"]
    assert [e["step"] for e in defi["evaluations"]] == [100, 200]
    assert defi["final"]["per_task"]["open_drawer"] == {"success_rate": 0.75, "episodes": 4}
    assert defi["final"]["mean_success"] == pytest.approx((0.75 + 0.25) / 2)
    assert defi["evaluations"][0]["episodes_per_task"] == 2
    assert defi["training"]["samples"] == 200 * config.batch_size
    assert defi["training"]["pretraining_wall_seconds"]["pretrain_gfdm"] == 5.0
    assert results["policies"]["act"]["final"]["mean_success"] == pytest.approx(0.125)
    assert "training" not in results["policies"]["act"]  # not trained in this run
    assert json.loads((tmp_path / bench.RESULTS_FILE).read_text()) == results
    assert (tmp_path / bench.PLOT_FILE).stat().st_size > 1000


def test_finished_stages_are_skipped_on_the_next_run(bench, tmp_path, capsys):
    config = bench.BenchmarkConfig(output_dir=str(tmp_path), policies=["act"], dry_run=True, curve_points=1)
    (tmp_path / bench.STAGES_FILE).write_text(json.dumps({"record": {"seconds": 1.0}}))
    bench.Benchmark(config).run()
    printed = capsys.readouterr().out
    assert (
        "[done] record" in printed and "[todo] train_act" in printed and "[todo] eval_act_003000" in printed
    )


def test_stand_in_vae_gets_the_latent_spread_of_svd(bench):
    """The GFDM reads VAE latents unscaled next to unit noise: the stand-in must give SVD's std 1/scaling_factor
    (a fresh random VAE gives ~0.2, and the frozen features then hardly see the image)."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder

    from lerobot_defi.models.latent_spread import calibration_images

    configs = bench.component_configs("tiny")
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder.from_config(configs["vae"])
    images = calibration_images(64, samples=4, seed=1)  # other images than the calibration's
    with torch.no_grad():
        before = vae.encode(images).latent_dist.mode().std().item()
    from closed_loop_components import calibrated_stand_in_vae

    calibrated = calibrated_stand_in_vae(configs["vae"], seed=0)
    with torch.no_grad():
        after = calibrated.encode(images).latent_dist.mode()
    assert before < 1.0
    assert abs(after.std().item() * calibrated.config.scaling_factor - 1.0) < 0.25


def test_every_policy_gets_the_same_frames_and_a_warm_up_that_fits_the_budget(bench, tmp_path):
    config = bench.BenchmarkConfig(output_dir=str(tmp_path), steps=800, size="tiny")
    plan = {job.name: job for job in bench.Benchmark(config).jobs()}
    for policy in ("defi", "defi_no_pretraining", "diffusion"):
        assert option(plan[f"train_{policy}"].command, "policy.drop_n_last_frames") == "0"
    assert not any("drop_n_last_frames" in arg for arg in plan["train_act"].command)  # ACT: always 0
    assert option(plan["train_diffusion"].command, "policy.scheduler_warmup_steps") == "40"  # 5 % of 800
    for policy in ("defi", "defi_no_pretraining"):
        assert option(plan[f"train_{policy}"].command, "policy.lr_warmup_steps") == "40"
        assert option(plan[f"train_{policy}"].command, "policy.gidm_lr") == "0.0001"


def test_evaluation_asks_for_each_task_with_a_sentence_of_the_training_data(bench, tmp_path):
    plan = {job.name: job for job in bench.Benchmark(bench.BenchmarkConfig(output_dir=str(tmp_path))).jobs()}
    for name in ("eval_defi_003000", "eval_act_001000"):
        command = plan[name].command
        assert option(command, "env.instructions") == "dataset"
        assert option(command, "env.instructions_dataset") == str(tmp_path / "dataset")


def results_part(bench, tmp_path, name: str, policies: dict[str, float], **config) -> dict:
    """A results.json as the benchmark writes it, with one final evaluation per policy."""
    out = tmp_path / name
    benchmark = bench.Benchmark(
        bench.BenchmarkConfig(
            output_dir=str(out), steps=100, curve_points=1, policies=list(policies), **config
        )
    )
    for policy, rate in policies.items():
        folder = out / "eval" / f"{policy}_000100"
        folder.mkdir(parents=True)
        (folder / "eval_info.json").write_text(
            json.dumps(eval_info({"open_drawer": [True] * int(rate * 4) + [False] * (4 - int(rate * 4))}))
        )
    return benchmark.write_results()


def test_parts_run_on_different_machines_merge_into_one_table(bench, tmp_path):
    first = results_part(bench, tmp_path, "part1", {"diffusion": 0.5, "act": 0.75})
    second = results_part(bench, tmp_path, "part2", {"defi": 1.0})
    second["machine"] = second["policies"]["defi"]["machine"] = "NVIDIA H200 (16 CPU cores)"
    (tmp_path / "part2" / bench.RESULTS_FILE).write_text(json.dumps(second))
    config = bench.BenchmarkConfig(
        output_dir=str(tmp_path / "merged"),
        merge=[str(tmp_path / "part1"), str(tmp_path / "part2" / "results.json")],
    )
    merged = bench.merge(config)
    assert set(merged["policies"]) == {"diffusion", "act", "defi"}
    assert merged["policies"]["defi"]["machine"] == "NVIDIA H200 (16 CPU cores)"
    assert merged["policies"]["act"]["machine"] == first["machine"]
    assert merged["policies"]["act"]["final"]["mean_success"] == 0.75
    assert [part["policies"] for part in merged["parts"]] == [["diffusion", "act"], ["defi"]]
    assert json.loads((tmp_path / "merged" / bench.RESULTS_FILE).read_text()) == merged
    assert (tmp_path / "merged" / bench.PLOT_FILE).is_file()


def test_committed_gpu_table_is_the_merge_of_its_committed_parts(bench, tmp_path):
    """benchmarks/results/gpu_closed_loop_2026-12-07/results.json (the README's table) is what --merge writes
    from the two parts as the benchmark wrote them on the lent machine."""
    results = SCRIPT.parent / "results"
    parts = [results / "gpu_closed_loop_part1_2026-12-07", results / "gpu_closed_loop_part2_2026-12-07"]
    merged = bench.merge(bench.BenchmarkConfig(output_dir=str(tmp_path), merge=[str(p) for p in parts]))
    committed = json.loads((results / "gpu_closed_loop_2026-12-07" / bench.RESULTS_FILE).read_text())
    assert merged == committed
    finals = {policy: entry["final"]["mean_success"] for policy, entry in committed["policies"].items()}
    assert finals == pytest.approx(
        {"defi": 0.85, "defi_no_pretraining": 0.70, "diffusion": 0.075, "act": 0.0625}
    )


def test_merge_refuses_parts_of_different_benchmarks(bench, tmp_path):
    from closed_loop_results import IncompatibleResultsError, merge_results

    first = results_part(bench, tmp_path, "a", {"act": 0.5})
    other_budget = results_part(bench, tmp_path, "b", {"defi": 0.5}, batch_size=8)
    with pytest.raises(IncompatibleResultsError, match="batch_size"):
        merge_results([first, other_budget])
    same_policy = results_part(bench, tmp_path, "c", {"act": 0.25})
    with pytest.raises(IncompatibleResultsError, match="act"):
        merge_results([first, same_policy])

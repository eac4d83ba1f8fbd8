"""Compiled artefacts kept on disk (``policy/compile_cache.py``): keys, entries, and warm starts in new processes.

The fast tests replace torch's ``save_cache_artifacts`` / ``load_cache_artifacts`` with recorders and check what
the cache does around them. The slow tests compile for real in fresh processes: a small module whose warm
process gets its compiled graph from the entry alone (an empty inductor folder), and the tiny policy loaded
with ``from_pretrained``, cold then warm.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from defi_test_utils import REPO_DIR, TESTS_DIR, tiny_batch, tiny_config

from lerobot_defi.policy.compile_cache import (
    ENTRY_MAGIC,
    CachedCompiledFunction,
    CompileCache,
    cached_compiled_function,
    config_as_saved,
    resolve_compile_cache_dir,
    weights_digest,
)
from lerobot_defi.policy.modeling_defi import DeFIPolicy

CACHE_LOGGER = "lerobot_defi.policy.compile_cache"


def make_policy(**overrides) -> DeFIPolicy:
    torch.manual_seed(0)
    return DeFIPolicy(tiny_config(feature_noise_seed=3, **overrides)).eval()


def chunk_inputs(policy: DeFIPolicy, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
    batch = tiny_batch(policy.config, batch_size=batch_size)
    with torch.no_grad():
        inputs = policy._tensor_inputs(batch)
    noise = torch.randn(batch_size, policy.config.chunk_size, policy.config.action_dim)
    return (*inputs, noise)


def cached_chunk_function(policy: DeFIPolicy, root: Path, mode: str = "default") -> CachedCompiledFunction:
    """The policy's eager chunk function behind the cache (what ``compile_modules`` wraps, minus compiling)."""
    description = {"policy_config": config_as_saved(policy.config)}
    return CachedCompiledFunction(policy._sample_chunk, CompileCache(root), policy, description, mode)


@pytest.fixture(scope="module")
def policy() -> DeFIPolicy:
    """One tiny policy for the fast tests (a test that changes it puts it back)."""
    return make_policy()


@pytest.fixture(scope="module")
def inputs(policy) -> tuple[torch.Tensor, ...]:
    return chunk_inputs(policy)


@pytest.fixture(autouse=True)
def inductor_folder_stays(monkeypatch):
    """Creating a CachedCompiledFunction points inductor's folder into its cache (process-wide): not here."""
    monkeypatch.setattr(CompileCache, "use_for_inductor", lambda self: None)


@pytest.fixture
def fake_torch_artifacts(monkeypatch):
    """torch.compiler's save/load of compile artefacts replaced by recorders; ``saved_payload`` is what a save
    returns."""
    record = SimpleNamespace(loaded=[], saves=0, saved_payload=b"compiled graphs of this process")

    def save():
        record.saves += 1
        return record.saved_payload, SimpleNamespace(artifacts={"inductor": [1], "aot_autograd": [1]})

    def load(payload: bytes):
        record.loaded.append(payload)

    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", save)
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", load)
    return record


def test_settings_resolve_to_a_folder_or_off(monkeypatch, tmp_path, policy):
    monkeypatch.setattr("lerobot.utils.constants.HF_LEROBOT_HOME", tmp_path / "home")
    assert resolve_compile_cache_dir("auto") == tmp_path / "home" / "defi_compile_cache"
    assert resolve_compile_cache_dir(str(tmp_path / "c")) == tmp_path / "c"
    for off in (None, "off", "None", ""):
        assert resolve_compile_cache_dir(off) is None
    assert (
        cached_compiled_function(policy._sample_chunk, "off", policy, {}, "default") == policy._sample_chunk
    )


def test_inductor_folder_moves_into_the_cache_unless_the_user_chose_one(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.undo()  # the real use_for_inductor
    use_for_inductor = CompileCache.use_for_inductor
    cache = CompileCache(tmp_path / "cache")
    for before in (None, default_cache_dir()):  # unset, or the default inductor set on its first use
        if before is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", before)
        use_for_inductor(cache)
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    use_for_inductor(cache)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_key_changes_with_weights_input_shapes_mode_and_matmul_settings(tmp_path, policy, inputs):
    cached = cached_chunk_function(policy, tmp_path)
    key, material = cached.key_for(inputs)
    assert cached.key_for(inputs)[0] == key  # deterministic
    assert material["inputs"][-1][0] == "(1, 10, 7)" and material["compile_mode"] == "default"

    parameter = next(policy.action_head.parameters())
    with torch.no_grad():
        parameter.view(-1)[0] += 1e-6
        assert cached.key_for(inputs)[0] != key  # one weight changed by 1e-6
        parameter.view(-1)[0] -= 1e-6
    assert cached.key_for(inputs)[0] == key

    assert cached.key_for(chunk_inputs(policy, batch_size=2))[0] != key
    assert cached_chunk_function(policy, tmp_path, mode="max-autotune").key_for(inputs)[0] != key
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cached.key_for(inputs)[0] != key
    # lerobot-train / lerobot-eval set allow_tf32, which inductor's graph cache keys by: another entry
    precision = torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.allow_tf32 = precision != "tf32"
        assert cached.key_for(inputs)[0] != key
    finally:
        torch.backends.cuda.matmul.fp32_precision = precision
    assert cached.key_for(inputs)[0] == key
    policy.config.n_action_steps = 5  # the config as saved, same weights
    try:
        assert cached_chunk_function(policy, tmp_path).key_for(inputs)[0] != key
    finally:
        policy.config.n_action_steps = 10


def test_weights_digest_sees_two_swapped_values():
    module = torch.nn.Linear(4, 3)
    before = weights_digest(module)
    with torch.no_grad():
        module.weight.view(-1)[[0, 5]] = module.weight.view(-1)[[5, 0]].clone()
    assert weights_digest(module) != before
    meta = torch.nn.Linear(4, 3, device="meta")
    with pytest.raises(ValueError, match=r"bias is on the meta device \(the weights are not loaded yet\)"):
        weights_digest(meta)


def test_first_call_saves_the_entry_and_a_new_process_loads_it(
    tmp_path, fake_torch_artifacts, policy, inputs
):
    with torch.no_grad():
        expected = policy._sample_chunk(*inputs)
        cold = cached_chunk_function(policy, tmp_path)
        torch.testing.assert_close(cold(*inputs), expected, rtol=0, atol=0)
        (status,) = cold.entries.values()
        assert (status.loaded, status.saved) == (False, True) and status.path.is_file()
        assert status.path.parent == tmp_path / "artifacts"
        cold(*inputs)  # later calls neither load nor save
        assert fake_torch_artifacts.saves == 1 and fake_torch_artifacts.loaded == []
        header = json.loads(status.path.read_bytes().split(b"\n")[1])
        assert header["key"] == status.key and header["artifacts"] == {"inductor": 1, "aot_autograd": 1}

        warm = cached_chunk_function(policy, tmp_path)  # what the next process builds
        torch.testing.assert_close(warm(*inputs), expected, rtol=0, atol=0)
    (status,) = warm.entries.values()
    assert (status.loaded, status.saved) == (True, False)
    # the first call's steps are timed (what a warm start spends where)
    assert set(status.seconds) == {"key", "load", "call", "save"}
    assert all(value >= 0 for value in status.seconds.values())
    assert fake_torch_artifacts.loaded == [b"compiled graphs of this process"]
    assert fake_torch_artifacts.saves == 1
    assert not list((tmp_path / "artifacts").glob(".*.tmp"))  # written atomically


def damaged_entries(path: Path) -> dict[str, bytes]:
    valid = path.read_bytes()
    header = json.loads(valid.split(b"\n")[1])
    other = dict(header, key="0" * 64)
    return {
        "not an entry": b"\x00\x01 random bytes",
        "cut after the first line": ENTRY_MAGIC + b'{"key": "',
        "another key": ENTRY_MAGIC + json.dumps(other).encode() + b"\n" + valid.split(b"\n", 2)[2],
        "truncated artefacts": valid[:-5],
    }


@pytest.mark.parametrize(
    "damage", ["not an entry", "cut after the first line", "another key", "truncated artefacts"]
)
def test_a_damaged_entry_is_ignored_with_one_warning_and_rewritten(
    tmp_path, caplog, fake_torch_artifacts, damage, policy, inputs
):
    with torch.no_grad():
        expected = policy._sample_chunk(*inputs)
        first = cached_chunk_function(policy, tmp_path)
        first(*inputs)
        (status,) = first.entries.values()
        status.path.write_bytes(damaged_entries(status.path)[damage])

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
            restarted = cached_chunk_function(policy, tmp_path)
            torch.testing.assert_close(restarted(*inputs), expected, rtol=0, atol=0)
    warnings = [r for r in caplog.records if r.name == CACHE_LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "\n" not in message and str(status.path) in message and "compiling anew" in message
    assert fake_torch_artifacts.loaded == []
    (restarted_status,) = restarted.entries.values()
    assert (restarted_status.loaded, restarted_status.saved) == (False, True)
    assert status.path.read_bytes().startswith(ENTRY_MAGIC)  # rewritten whole
    with torch.no_grad():
        cached_chunk_function(policy, tmp_path)(*inputs)
    assert fake_torch_artifacts.loaded == [b"compiled graphs of this process"]


def test_a_failing_load_is_ignored_with_one_warning(
    tmp_path, caplog, fake_torch_artifacts, monkeypatch, policy, inputs
):
    with torch.no_grad():
        cached_chunk_function(policy, tmp_path)(*inputs)

        def incompatible(payload):
            raise RuntimeError("artefacts of another\ntorch build")

        monkeypatch.setattr(torch.compiler, "load_cache_artifacts", incompatible)
        with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
            restarted = cached_chunk_function(policy, tmp_path)
            restarted(*inputs)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == CACHE_LOGGER]
    assert "artefacts of another torch build" in warning
    assert next(iter(restarted.entries.values())).saved


def test_an_unwritable_folder_costs_a_warning_not_the_action(
    tmp_path, caplog, fake_torch_artifacts, policy, inputs
):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        cached = cached_chunk_function(policy, blocker)
        assert cached(*inputs).shape == (1, 10, 7)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == CACHE_LOGGER]
    assert warning.startswith("Compile cache: could not write") and "next start compiles again" in warning


# --- real compilation in fresh processes -----------------------------------------------------------------------
def run_python(script: str, env: dict, *args: str) -> dict:
    """Run ``script`` in a fresh interpreter; returns the JSON it prints on its last line."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, cwd=REPO_DIR
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


SMALL_MODULE_START = """
import json, sys
sys.path.insert(0, sys.argv[2])
import torch
from defi_test_utils import compile_scalar_cpu_kernels
from torch._dynamo.utils import counters
from lerobot_defi.policy.compile_cache import CachedCompiledFunction, CompileCache

compile_scalar_cpu_kernels()
torch.manual_seed(0)
module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16)).eval()
cached = CachedCompiledFunction(
    torch.compile(module, dynamic=False), CompileCache(sys.argv[1]), module, {"model": "small"}, "default"
)
with torch.no_grad():
    output = cached(torch.linspace(-1, 1, 24).reshape(3, 8))
(status,) = cached.entries.values()
print(json.dumps({"output": output.tolist(), "loaded": status.loaded, "saved": status.saved,
                  "hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""


@pytest.mark.slow
def test_the_entry_alone_gives_a_new_process_the_compiled_graph(tmp_path):
    """The warm process has an empty inductor folder: its compiled graph can only come from the entry."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor_cold"))
    cold = run_python(SMALL_MODULE_START, env, str(tmp_path / "cache"), str(TESTS_DIR))
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor_empty")
    warm = run_python(SMALL_MODULE_START, env, str(tmp_path / "cache"), str(TESTS_DIR))
    assert (cold["loaded"], cold["saved"], cold["misses"]) == (False, True, 1)
    assert (warm["loaded"], warm["saved"], warm["hits"], warm["misses"]) == (True, False, 1, 0)
    assert warm["output"] == cold["output"]


POLICY_START = """
import json, sys
sys.path.insert(0, sys.argv[3])
import torch
from torch._dynamo.utils import counters
from defi_test_utils import compile_scalar_cpu_kernels, tiny_batch
from lerobot_defi.policy.modeling_defi import DeFIPolicy

compile_scalar_cpu_kernels()
policy = DeFIPolicy.from_pretrained(sys.argv[1]).eval()
policy.config.compile_cache_dir = sys.argv[2]
policy.compile_modules("default")
batch = tiny_batch(policy.config, batch_size=2)
noise = torch.randn(2, 10, 7, generator=torch.Generator().manual_seed(5))
actions = [policy.select_action(batch, noise=noise) for _ in range(3)]
(status,) = policy._compiled_sample.entries.values()
print(json.dumps({"actions": torch.cat(actions).tolist(), "loaded": status.loaded, "saved": status.saved,
                  "entry": str(status.path), "hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"] + counters["aot_autograd"]["autograd_cache_miss"]}))
"""


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_tiny_policy_warm_start_loads_the_entry_and_repeats_the_actions(tmp_path):
    """from_pretrained + compile_modules + select_action in two fresh processes sharing a compile cache folder.

    Both use the test session's inductor folder (``TORCHINDUCTOR_CACHE_DIR``, tests/conftest.py), where the cold
    process compiles the tiny policy's batch-2 chunk (~170 C++ kernels without SIMD, about 2 minutes on 2 cores)
    for the later tests that compile the same graph or kernels of it (test_fast_paths, test_low_precision_weights).
    The entry-only path is the small-module test above."""
    make_policy().save_pretrained(tmp_path / "policy")
    env = dict(os.environ)  # with the session's TORCHINDUCTOR_CACHE_DIR, which the compile cache then keeps
    args = (str(tmp_path / "policy"), str(tmp_path / "cache"), str(TESTS_DIR))
    cold = run_python(POLICY_START, env, *args)
    warm = run_python(POLICY_START, env, *args)
    assert (cold["loaded"], cold["saved"]) == (False, True)
    assert (warm["loaded"], warm["saved"], warm["misses"]) == (True, False, 0) and warm["hits"] >= 1
    assert warm["entry"] == cold["entry"]  # the same key in another process
    assert warm["actions"] == cold["actions"]

"""Low-precision copies of the trainable weights at inference (``policy/low_precision_weights.py``): the chunk reads
them instead of casting the fp32 weights under autocast at every call, with the same numbers, and sees every change
of the weights (docs/performance.md §2).

Reference: the chunk as it was before the copies, ``_sample_chunk`` with the fp32 weights under the policy's bf16
autocast (eager or compiled).
"""

from collections import Counter

import pytest
import torch
from defi_test_utils import tiny_batch, tiny_config
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode

from lerobot_defi.policy.compile_cache import weights_digest
from lerobot_defi.policy.modeling_defi import AUTOCAST_PARTS, DeFIPolicy


def make_policy(**overrides) -> DeFIPolicy:
    torch.manual_seed(0)
    overrides = {"feature_noise_seed": 3, "dtype": "bfloat16", **overrides}
    return DeFIPolicy(tiny_config(**overrides)).eval()


def chunk_inputs(policy: DeFIPolicy, batch: dict, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return (*policy._tensor_inputs(batch), noise)


def autocast_chunk(policy: DeFIPolicy, batch: dict, noise: torch.Tensor, fn=None) -> torch.Tensor:
    """The chunk before the copies: ``_sample_chunk`` (or ``fn``) with the fp32 weights under bf16 autocast."""
    inputs = chunk_inputs(policy, batch, noise)
    with torch.no_grad(), policy._mixed_precision("cpu"):
        return (fn or policy._sample_chunk)(*inputs).float()


@pytest.fixture
def batch_and_noise():
    policy = make_policy()
    return tiny_batch(policy.config, batch_size=2), torch.randn(2, 10, 7)


def trainable_parameters(policy: DeFIPolicy) -> dict[str, torch.Tensor]:
    trainable = {name: p for name, p in policy.named_parameters() if p.requires_grad}
    assert {name.split(".")[0] for name in trainable} == set(AUTOCAST_PARTS) | {"gidm_frame_embedding"}
    return trainable


def test_bf16_chunk_reads_the_copies_and_equals_autocast_of_the_fp32_weights(batch_and_noise):
    batch, noise = batch_and_noise
    policy = make_policy()
    state_before = {k: v.clone() for k, v in policy.state_dict().items()}
    expected = autocast_chunk(policy, batch, noise)
    got = policy.predict_action_chunk(batch, noise=noise)
    eager = policy.predict_action_chunk(batch, noise=noise, compiled=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(eager, expected, rtol=0, atol=0)

    weights = policy._low_precision_weights
    assert weights.ready and len(weights) == len(weights.names) > 0
    assert all(c.dtype == torch.bfloat16 for c in weights._copies)
    # The fp32 parameters are back in their modules; the copies are in no state_dict, parameter or buffer list.
    assert all(type(p) is torch.nn.Parameter and p.dtype == torch.float32 for p in policy.parameters())
    state = policy.state_dict()
    assert list(state) == list(state_before)
    assert all(state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in state_before.items())
    copies = {t.data_ptr() for t in weights._copies}
    tensors = [*policy.parameters(), *policy.buffers(), *state.values()]
    assert not any(t.data_ptr() in copies for t in tensors)


class ParameterUses(TorchDispatchMode):
    """Records, per parameter of ``named``, each op (below autocast: its casts are ops too) that reads it."""

    def __init__(self, named: dict[str, torch.Tensor]):
        super().__init__()
        self.names = {p.data_ptr(): name for name, p in named.items()}
        self.uses: dict[str, Counter] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for arg in args:
            if torch.is_tensor(arg) and arg.data_ptr() in self.names:
                use = (str(func), kwargs.get("dtype"))
                self.uses.setdefault(self.names[arg.data_ptr()], Counter())[use] += 1
        return func(*args, **kwargs)


def test_the_copies_are_exactly_the_weights_autocast_casts(batch_and_noise):
    """Against what autocast does on the CPU: a weight gets a copy iff the fp32 chunk reads it only through casts to
    bf16 (LayerNorm weights, embeddings and the VQ codebook, read by fp32 ops too, keep none); with the copies, no
    fp32 weight that has a copy is read at all, and the codebook is the only weight still cast."""
    batch, noise = batch_and_noise
    policy = make_policy()
    policy.predict_action_chunk(batch, noise=noise)  # makes the copies
    named = trainable_parameters(policy)
    inputs = chunk_inputs(policy, batch, noise)
    with torch.no_grad(), policy._mixed_precision("cpu"), ParameterUses(named) as before:
        policy._sample_chunk(*inputs)
    only_cast = {
        name for name, uses in before.uses.items() if set(uses) == {("aten._to_copy.default", torch.bfloat16)}
    }
    assert set(policy._low_precision_weights.names) == only_cast
    codebook = "gidm.quantizer.codebook.weight"
    assert codebook in before.uses and codebook not in only_cast
    assert not any(name.endswith(("norm.weight", "norm_media.weight")) for name in only_cast)

    with torch.no_grad(), policy._mixed_precision("cpu"), ParameterUses(named) as after:
        policy._inference_chunk(*inputs)
    assert not set(after.uses) & only_cast
    casts = [n for n, uses in after.uses.items() if any(op == "aten._to_copy.default" for op, _ in uses)]
    assert casts == [codebook]


@pytest.mark.parametrize("optimizer", ["for-loop", "foreach", "fused"])
def test_an_optimizer_step_reaches_the_next_chunk(batch_and_noise, optimizer):
    """Fused optimizer kernels leave the version counters alone: the count of optimizer steps catches them."""
    batch, noise = batch_and_noise
    policy = make_policy()
    first = policy.predict_action_chunk(batch, noise=noise)
    copies = [t.data_ptr() for t in policy._low_precision_weights._copies]
    kernels = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    step = torch.optim.AdamW(policy.get_optim_params(), lr=1e-2, **kernels[optimizer])
    policy.train()
    policy.forward(batch)[0].backward()
    step.step()
    policy.eval()
    got = policy.predict_action_chunk(batch, noise=noise)

    fresh = make_policy()
    fresh.load_state_dict(policy.state_dict())
    torch.testing.assert_close(got, fresh.predict_action_chunk(batch, noise=noise), rtol=0, atol=0)
    torch.testing.assert_close(got, autocast_chunk(policy, batch, noise), rtol=0, atol=0)
    assert not torch.equal(got, first)
    # Refreshed in place: a captured CUDA graph reading the copies stays valid.
    assert [t.data_ptr() for t in policy._low_precision_weights._copies] == copies


def test_load_state_dict_in_place_writes_and_data_writes_reach_the_next_chunk(batch_and_noise, tmp_path):
    batch, noise = batch_and_noise
    policy = make_policy()
    policy.predict_action_chunk(batch, noise=noise)
    torch.manual_seed(1)
    other = DeFIPolicy(tiny_config(feature_noise_seed=3, dtype="bfloat16")).eval()
    policy.load_state_dict(other.state_dict())
    torch.testing.assert_close(
        policy.predict_action_chunk(batch, noise=noise),
        other.predict_action_chunk(batch, noise=noise),
        rtol=0,
        atol=0,
    )

    weight = policy.action_head.action_out.bias
    with torch.no_grad():
        weight.add_(0.5)  # an in-place op bumps the version counter
    torch.testing.assert_close(
        policy.predict_action_chunk(batch, noise=noise), autocast_chunk(policy, batch, noise), rtol=0, atol=0
    )

    stale = policy.predict_action_chunk(batch, noise=noise)
    weight.data.add_(0.5)  # .data bypasses the version counter: the policy must be told
    assert torch.equal(policy.predict_action_chunk(batch, noise=noise), stale)
    policy.weights_changed()
    torch.testing.assert_close(
        policy.predict_action_chunk(batch, noise=noise), autocast_chunk(policy, batch, noise), rtol=0, atol=0
    )


def test_a_replaced_parameter_reaches_the_next_chunk_and_stays(batch_and_noise):
    batch, noise = batch_and_noise
    policy = make_policy()
    policy.predict_action_chunk(batch, noise=noise)
    copies = policy._low_precision_weights._copies
    layer = policy.action_head.action_out
    replacement = torch.nn.Parameter(layer.weight.detach() * 2)
    layer.weight = replacement
    got = policy.predict_action_chunk(batch, noise=noise)
    assert layer.weight is replacement and policy._low_precision_weights._copies is not copies  # made anew
    torch.testing.assert_close(got, autocast_chunk(policy, batch, noise), rtol=0, atol=0)


def test_copies_are_not_saved_and_do_not_change_the_compile_cache_key(batch_and_noise, tmp_path):
    batch, noise = batch_and_noise
    policy = make_policy()
    digest = weights_digest(policy)
    expected = policy.predict_action_chunk(batch, noise=noise)
    assert policy._low_precision_weights.ready
    assert weights_digest(policy) == digest  # the compile cache key's digest: the fp32 weights only
    policy.save_pretrained(tmp_path / "saved")
    with safe_open(tmp_path / "saved" / "model.safetensors", framework="pt") as f:
        saved = {key: f.get_slice(key).get_dtype() for key in f.keys()}  # noqa: SIM118
    named = trainable_parameters(policy)
    assert set(saved) <= set(policy.state_dict()) and set(named) <= set(saved)
    assert {saved[name] for name in named} == {"F32"}
    loaded = DeFIPolicy.from_pretrained(tmp_path / "saved").eval()
    assert not loaded._low_precision_weights.ready
    torch.testing.assert_close(loaded.predict_action_chunk(batch, noise=noise), expected, rtol=0, atol=0)


def test_moving_the_policy_drops_the_copies_and_the_next_chunk_makes_them(batch_and_noise):
    batch, noise = batch_and_noise
    policy = make_policy()
    expected = policy.predict_action_chunk(batch, noise=noise)
    policy.to("cpu")
    assert not policy._low_precision_weights.ready and len(policy._low_precision_weights) == 0
    torch.testing.assert_close(policy.predict_action_chunk(batch, noise=noise), expected, rtol=0, atol=0)
    assert policy._low_precision_weights.ready


def test_released_inference_memory_is_made_again_at_the_next_chunk(batch_and_noise):
    batch, noise = batch_and_noise
    policy = make_policy()
    expected = policy.predict_action_chunk(batch, noise=noise)
    policy.release_inference_memory()
    assert not policy._low_precision_weights.ready and len(policy._low_precision_weights) == 0
    torch.testing.assert_close(policy.predict_action_chunk(batch, noise=noise), expected, rtol=0, atol=0)
    assert policy._low_precision_weights.ready


def test_training_mode_and_float32_read_the_fp32_weights(batch_and_noise):
    batch, noise = batch_and_noise
    policy = make_policy(dtype="float32")
    assert policy._low_precision_weights is None
    policy.predict_action_chunk(batch, noise=noise)

    policy = make_policy()
    policy.train()
    reads = ParameterUses(trainable_parameters(policy))
    with reads:
        policy.predict_action_chunk(batch, noise=noise)
    assert not policy._low_precision_weights.ready
    assert "action_head.action_out.weight" in reads.uses


def test_copies_made_under_inference_mode_are_refreshed_outside_it(batch_and_noise):
    """lerobot-eval predicts under ``torch.inference_mode``: the copies must still take in-place updates later."""
    batch, noise = batch_and_noise
    policy = make_policy()
    with torch.inference_mode():
        policy.predict_action_chunk(batch, noise=noise)
    assert not any(t.is_inference() for t in policy._low_precision_weights._copies)
    with torch.no_grad():
        policy.action_head.action_out.bias.add_(0.5)
    torch.testing.assert_close(
        policy.predict_action_chunk(batch, noise=noise), autocast_chunk(policy, batch, noise), rtol=0, atol=0
    )


def freeze_gfdm_features(policy: DeFIPolicy, inputs: tuple[torch.Tensor, ...], monkeypatch) -> None:
    """The GFDM's features for ``inputs``, computed once, as what its forward returns from now on. The frozen GFDM
    runs outside autocast and has no copies, and compiling it is what takes minutes on a CPU."""
    from lerobot_defi.models.gfdm import text_context_from_clip

    images, feature_noise, clip_hidden = inputs[:3]
    cameras = len(policy.config.gfdm_camera_keys)
    with torch.no_grad():
        context = text_context_from_clip(clip_hidden, policy.gfdm.cross_attention_dim).repeat(cameras, 1, 1)
        features = policy.gfdm(images, context, noise=feature_noise)
    monkeypatch.setattr(policy.gfdm, "forward", lambda *args, **kwargs: features)


@pytest.mark.slow
def test_compiled_chunk_with_copies_equals_the_compiled_chunk_of_the_fp32_weights(
    batch_and_noise, monkeypatch, tmp_path
):
    """``compile_modules("default")`` (the whole chunk in one graph, behind the compile cache) against the chunk
    compiled before the copies, on the same weights; then after an optimizer step and after ``.to()``, without
    compiling again (the copies are graph inputs, refreshed in place or made anew).

    Bitwise equal here (batch 2); inductor may fuse the graph without the casts differently, so the bound is a
    rounding-noise one, a third of the compiled chunk's own distance to the eager chunk (3.5e-3). At batch 1 the
    chunk moves by 4.6e-4: the Video Former's compiled output, 8.8e-3 from eager before, comes to 2.4e-7."""
    from torch._dynamo.utils import counters

    from lerobot_defi.policy.compile_cache import CompileCache

    monkeypatch.setattr(CompileCache, "use_for_inductor", lambda self: None)  # keep inductor's warm folder
    batch, noise = batch_and_noise
    policy = make_policy(compile_mode="default", compile_cache_dir=str(tmp_path / "cache"))
    freeze_gfdm_features(policy, chunk_inputs(policy, batch, noise), monkeypatch)
    before = torch.compile(policy._sample_chunk, dynamic=False)  # the compiled chunk without copies

    got = policy.predict_action_chunk(batch, noise=noise)
    assert policy._low_precision_weights.ready
    torch.testing.assert_close(got, autocast_chunk(policy, batch, noise, before), rtol=0, atol=1e-3)
    (entry,) = policy._compiled_sample.entries.values()
    assert entry.saved and entry.path.is_file()
    graphs = counters["stats"]["unique_graphs"]

    step = torch.optim.AdamW(policy.get_optim_params(), lr=1e-2)
    policy.train()
    with torch.compiler.set_stance("force_eager"):  # a training step that changes the weights, not compiled
        policy.forward(batch)[0].backward()
    step.step()
    policy.eval()
    stepped = policy.predict_action_chunk(batch, noise=noise)
    assert (stepped - got).abs().max() > 0.1  # the step moves the chunk by far more than the bound (0.41)
    torch.testing.assert_close(stepped, autocast_chunk(policy, batch, noise, before), rtol=0, atol=1e-3)

    policy.to("cpu")  # drops the copies: made anew at the next chunk
    torch.testing.assert_close(policy.predict_action_chunk(batch, noise=noise), stepped, rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.gpu
def test_cuda_graph_replays_with_the_refreshed_copies():
    """The captured graph reads the copies at fixed addresses: after an optimizer step the next chunk is a replay
    (no new capture) with the new weights, as a policy compiled and captured afresh with those weights gives."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine with -m gpu)")
    settings = {"device": "cuda", "gfdm_dtype": "bfloat16", "compile_mode": "reduce-overhead"}
    policy = make_policy(**settings).cuda()
    batch = {
        k: v.cuda() if torch.is_tensor(v) else v for k, v in tiny_batch(policy.config, batch_size=2).items()
    }
    noise = torch.randn(2, 10, 7, device="cuda")
    for _ in range(3):  # warm-up and capture
        first = policy.predict_action_chunk(batch, noise=noise)
    assert len(policy._compiled_sample) == 1 and policy._low_precision_weights.ready
    copies = [t.data_ptr() for t in policy._low_precision_weights._copies]

    step = torch.optim.AdamW(policy.get_optim_params(), lr=1e-2)  # foreach kernels on CUDA
    policy.train()
    policy.forward(batch)[0].backward()
    step.step()
    policy.eval()
    replayed = policy.predict_action_chunk(batch, noise=noise)
    assert len(policy._compiled_sample) == 1  # the same graph, replayed
    assert [t.data_ptr() for t in policy._low_precision_weights._copies] == copies
    assert (replayed - first).abs().max() > 0.1  # the step moves the chunk by ~0.4 (0.41 on the CPU)

    twin = make_policy(**settings)
    twin.load_state_dict(policy.state_dict())
    twin = twin.cuda()
    for _ in range(3):
        fresh = twin.predict_action_chunk(batch, noise=noise)
    # The same compiled code on the same weights; the bound allows other kernel choices of a second compilation.
    torch.testing.assert_close(replayed, fresh, rtol=0, atol=2e-3)
    eager = policy.predict_action_chunk(batch, noise=noise, compiled=False)
    assert (replayed - eager).abs().max() < 5e-2  # compiled bf16 vs eager bf16: rounding only

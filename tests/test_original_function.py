"""With the same weights, observation, instruction and noise, the policy computes the original's function
(docs/method.md §2.2, §3.1, §4.2, §4.3, §5.4, §8.10, §8.26).

The reference below re-computes the original's Stage-3 data flow from uint8 camera images and instruction
strings. It reuses the policy's network layers (GFDM UNet pass, Video Former, GIDM blocks and projections,
action head), which are checked against the original elsewhere, but does on its own the parts where a port
most easily drifts from the original: the image transform (torchvision ``Resize`` on uint8, ``/ 255``,
``Normalize``), the CLIP context (ids and attention mask), T5 on the batch padded to its longest (ids and mask,
dropout in training), the GIDM's key-padding mask tiled as the original tiles it, and the vector quantiser's
losses.
"""

from contextlib import contextmanager

import pytest
import torch
from defi_test_utils import CALVIN_CAMERAS, tiny_config
from einops import rearrange
from torchvision import transforms

from lerobot_defi.policy.modeling_defi import DeFIPolicy
from lerobot_defi.policy.processor_defi import DeFIImageProcessorStep

# Instructions of different lengths (byte-level tiny tokenizers: 4 / 15 / 48 T5 tokens + </s>).
TASKS = ["lift", "open the drawer", "push the red block to the left side of the table"]
FEATURE_NOISE_SEED = 11


def uint8_cameras(batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """CALVIN-sized camera images (static 200 x 200, gripper 84 x 84) as the dataset stores them."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.randint(0, 256, (batch_size, *shape), generator=generator, dtype=torch.uint8)
        for key, shape in CALVIN_CAMERAS.items()
    }


def policy_batch(policy: DeFIPolicy, cameras: dict, dtype: torch.dtype, actions=None) -> dict:
    """What LeRobot gives the policy: decoded frames (uint8 / 255) through the DeFI image processor."""
    step = DeFIImageProcessorStep(image_keys=policy.config.cameras, size=policy.config.image_size)
    batch = step.observation({key: image.to(dtype) / 255 for key, image in cameras.items()})
    batch["task"] = list(TASKS)
    if actions is not None:
        batch["action"] = actions
        batch["action_is_pad"] = torch.zeros(actions.shape[:2], dtype=torch.bool)
    return batch


def original_function(
    policy: DeFIPolicy, cameras: dict, tasks: list[str], dtype: torch.dtype, t5_training: bool = False
) -> dict:
    """The original's forward up to the action head's context (docs/method.md §4.3a–§4.3f), from uint8
    images."""
    cfg = policy.config
    text = policy.text
    gidm = policy.gidm
    b = len(tasks)
    # (4.2) resize the uint8 image, / 255, normalise with mean 0.5 / std 0.5
    transform = transforms.Compose(
        [
            transforms.Resize(cfg.image_size, antialias=True),
            transforms.Lambda(lambda image: image.to(dtype).div(255)),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    static = transform(cameras["observation.images.static"])
    gripper = transform(cameras["observation.images.gripper"])
    # (4.3 a) goal: CLIP's projected end-of-text embedding of the 77-token input
    goal_ids = text.clip_tokenizer(
        tasks, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    goal = text.clip(input_ids=goal_ids).text_embeds[:, None]
    # (2.2) GFDM context: `text_encoder(**inputs)` with ids and attention mask, 20 tokens, channels duplicated
    clip_inputs = text.clip_tokenizer(
        tasks, padding="max_length", max_length=20, truncation=True, return_tensors="pt"
    )
    hidden = text.clip(**clip_inputs).last_hidden_state
    context = torch.cat([hidden, hidden], dim=-1)
    # (4.3 b, c) one UNet pass over [static; gripper] with the same unit-variance noise as the policy
    images = torch.cat([static, gripper])
    latent = cfg.image_size // policy.gfdm.latent_downsample
    shape = (2 * b, cfg.gfdm_num_frames, policy.gfdm.latent_channels, latent, latent)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(FEATURE_NOISE_SEED))
    features = policy.gfdm(images, torch.cat([context, context]), noise=noise)
    tokens = rearrange(features, "b f c h w -> b f (h w) c")
    static_tokens, gripper_tokens = tokens[:b], tokens[b:]
    # (4.3 d) Video Former over both cameras' tokens
    video_tokens = policy.video_former(torch.cat([static_tokens, gripper_tokens], dim=2))
    # (4.3 e) GIDM on frames (0, 2) of the static camera (the tiny preset's gidm_frame_indices)
    pair = torch.stack([static_tokens[:, i] for i in cfg.gidm_frame_indices], dim=1)
    frames = policy.gidm_feature_proj(pair) + policy.gidm_frame_embedding
    t5_inputs = text.t5_tokenizer(tasks, padding=True, return_tensors="pt")
    text.t5.train(t5_training)
    with torch.no_grad():
        t5_states = text.t5(**t5_inputs).last_hidden_state
    text.t5.eval()
    language = gidm.text_projection(t5_states)
    queries = gidm.action_queries.expand(b, 2, -1, -1)
    x = gidm.input_projection(torch.cat([queries, frames], dim=2)) + gidm.position_code
    x = torch.cat([x, language[:, None].expand(-1, 2, -1, -1)], dim=2)
    # key-padding mask [ones(queries + patches), T5 mask] repeated T times: row (sample s, frame t) = s*T + t
    # gets the mask of sample (s*T + t) % B (docs/method.md §8.10)
    visual = torch.ones(b, x.shape[2] - language.shape[1], dtype=torch.long)
    keys = torch.cat([visual, t5_inputs.attention_mask], dim=1).repeat(2, 1).bool()
    for block in gidm.blocks:
        x = block(x, keys[:, None, None, :])
    z = gidm.to_codebook(x[:, 1, : cfg.gidm.num_latent_tokens])
    codebook = gidm.quantizer.codebook.weight
    code = codebook[((z[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)]
    latent_action_tokens = gidm.action_up(z + (code - z).detach())
    return {
        "images": images,
        "features": features,
        "video_tokens": video_tokens,
        "z": z,
        "code_loss": ((z.detach() - code) ** 2).mean(),
        "commitment_loss": ((z - code.detach()) ** 2).mean(),
        "latent_action_tokens": latent_action_tokens,
        "context": policy.action_head.encode_context(goal, video_tokens, latent_action_tokens),
    }


@contextmanager
def recording(policy: DeFIPolicy):
    """GFDM input and features, Video Former tokens, GIDM z and outputs of the policy's calls in the block."""
    seen = {}

    def keep_gfdm(module, args, features):
        seen.update(images=args[0], features=features)

    hooks = [
        policy.gfdm.register_forward_hook(keep_gfdm),
        policy.video_former.register_forward_hook(lambda m, args, out: seen.update(video_tokens=out)),
        policy.gidm.to_codebook.register_forward_hook(lambda m, args, out: seen.update(z=out)),
        policy.gidm.register_forward_hook(lambda m, args, out: seen.update(out, gidm_inputs=args)),
    ]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def tiny_policy(**overrides) -> DeFIPolicy:
    torch.manual_seed(0)
    return DeFIPolicy(tiny_config(feature_noise_seed=FEATURE_NOISE_SEED, **overrides))


def test_inference_equals_the_original_function_in_float64():
    policy = tiny_policy().double().eval()
    cameras = uint8_cameras(len(TASKS), seed=1)
    noise = torch.randn(len(TASKS), policy.config.chunk_size, 7, generator=torch.Generator().manual_seed(2))
    with recording(policy) as seen:
        chunk = policy.predict_action_chunk(
            policy_batch(policy, cameras, torch.float64), noise=noise.double()
        )
    assert {"images", "features", "video_tokens", "z", "code_loss"} <= set(seen)
    with torch.no_grad():
        reference = original_function(policy, cameras, TASKS, torch.float64)
        expected_chunk = policy.action_head.sample(reference["context"], noise=noise.double())

    def close(actual, expected):
        torch.testing.assert_close(actual.double(), expected.double(), rtol=1e-6, atol=1e-6)

    close(seen["images"], reference["images"])
    close(seen["features"], reference["features"])
    close(seen["video_tokens"], reference["video_tokens"])
    close(seen["z"], reference["z"])
    close(seen["latent_action_tokens"], reference["latent_action_tokens"])
    close(seen["code_loss"], reference["code_loss"])
    close(seen["commitment_loss"], reference["commitment_loss"])
    close(chunk, expected_chunk)
    # The tiled mask lets rows read other samples' padded T5 slots: zeros there (per-instruction zero padding,
    # the policy's old behaviour) would change the GIDM's output.
    frames, t5_states, t5_mask = seen["gidm_inputs"]
    with torch.no_grad():
        zero_padded = policy.gidm(frames, t5_states * t5_mask[..., None], t5_mask)
    assert abs(zero_padded["code_loss"] - reference["code_loss"]) > 1e-4


@pytest.mark.parametrize("t5_dropout_in_training", [True, False])
def test_training_loss_of_a_mixed_length_batch_equals_the_original(t5_dropout_in_training):
    policy = tiny_policy(t5_dropout_in_training=t5_dropout_in_training).train()
    cameras = uint8_cameras(len(TASKS), seed=3)
    actions = torch.rand(len(TASKS), policy.config.chunk_size, 7, generator=torch.Generator().manual_seed(4))
    batch = policy_batch(policy, cameras, torch.float32, actions=actions * 2 - 1)
    # Same random stream: T5 dropout, then the action head's dropout, sigma and noise draws (the GFDM noise
    # comes from its own seeded generator in both).
    torch.manual_seed(5)
    loss, info = policy.forward(batch)
    torch.manual_seed(5)
    reference = original_function(policy, cameras, TASKS, torch.float32, t5_training=t5_dropout_in_training)
    action_loss = policy.action_head.loss(batch["action"], reference["context"], batch["action_is_pad"])
    expected = action_loss + reference["code_loss"] + 0.25 * reference["commitment_loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert info["vq_code_loss"] == pytest.approx(reference["code_loss"].item(), rel=1e-4)
    assert not policy.text.t5.training  # the frozen T5 is back in eval mode
    # With the other setting of the flag the loss is not the same (dropout reaches the GIDM through T5).
    torch.manual_seed(5)
    other = original_function(policy, cameras, TASKS, torch.float32, t5_training=not t5_dropout_in_training)
    other_loss = policy.action_head.loss(batch["action"], other["context"], batch["action_is_pad"])
    other_total = other_loss + other["code_loss"] + 0.25 * other["commitment_loss"]
    assert abs(other_total.item() - expected.item()) > 1e-3 * abs(expected.item())


def test_inference_never_runs_t5_with_dropout():
    policy = tiny_policy().train()  # even a policy left in training mode samples without T5 dropout
    modes = []
    policy.text.t5.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    batch = policy_batch(policy, uint8_cameras(len(TASKS), seed=6), torch.float32)
    noise = torch.zeros(len(TASKS), policy.config.chunk_size, 7)
    policy.predict_action_chunk(batch, noise=noise)
    assert modes and not any(modes)
    policy.forward({**batch, "action": noise, "action_is_pad": torch.zeros(3, 10, dtype=torch.bool)})
    assert modes[-1]  # training: dropout on (the default, as the original trains)

"""Importing the official DeFI release (docs/method.md §1.2, §3.5, §3.6, §4.9, §8.16, §8.17, §8.19, §8.20).

* The reference list of the official Stage-3 trainable tensors (names and shapes from the official module
  definitions, ``tests/data/official_stage3_keys.json``) fills every trainable tensor of the official-size
  policy, full size, with nothing missing or unexpected.
* A tiny release in the official formats (Stage-3 ``{'model', 'args'}`` file with the official names at tiny
  sizes, a diffusers SVD pipeline folder as ``save_pretrained`` writes it) goes through the command and gives a
  policy equal to its source that acts through its saved processors.
* Corrupted files fail with the tensor's name; nothing half-written is left; checkpoints load without running
  code; the Stage-2 latent-action checkpoint and the GFDM folder import as well.
"""

import json
import os
import pathlib
import shutil
from types import SimpleNamespace

import pytest
import torch
from defi_test_utils import CALVIN_CAMERAS, TESTS_DIR, tiny_config
from lerobot.configs import PreTrainedConfig
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.factory import make_pre_post_processors

from lerobot_defi.models.gfdm import GFDMFeatureExtractor
from lerobot_defi.models.gidm import LatentActionModel
from lerobot_defi.models.reference_architectures import official_random_config_overrides
from lerobot_defi.official.checkpoints import (
    InertObject,
    OfficialCheckpointError,
    load_official_checkpoint,
    load_stage3_state_dict,
)
from lerobot_defi.official.cli import main
from lerobot_defi.official.gfdm import import_gfdm
from lerobot_defi.official.gidm import import_gidm
from lerobot_defi.official.keymap import map_state_dict, stage3_keymap
from lerobot_defi.official.policy import import_policy
from lerobot_defi.official.report import REPORT_FILE
from lerobot_defi.policy.configuration_defi import DeFIConfig, load_preset
from lerobot_defi.policy.modeling_defi import DeFIPolicy

OFFICIAL_KEYS: dict[str, list[int]] = json.loads(
    (TESTS_DIR / "data" / "official_stage3_keys.json").read_text()
)["keys"]
DEAD_TENSORS = {
    "model.inner_model.pos_emb",
    *(
        f"model.inner_model.{m}.{i}.{p}"
        for m in ("goal_emb", "proprio_emb")
        for i in (0, 2)
        for p in ("weight", "bias")
    ),
}


class HydraLikeConfig:
    """Stands for the omegaconf object under ``args``: unknown to the weights-only unpickler; must never be
    constructed or have its state set while loading."""

    def __init__(self, values: dict):
        self.values = values

    def __getstate__(self):
        return {"values": self.values}

    def __setstate__(self, state):
        raise AssertionError("the loader ran code from the checkpoint")


# --- the official key list at full size -----------------------------------------------------------------------


def test_official_key_list_fills_every_trainable_tensor_of_the_official_size_policy(tmp_path):
    assert len(OFFICIAL_KEYS) == 522
    assert sum(torch.Size(s).numel() for s in OFFICIAL_KEYS.values()) == 157_923_335
    config = DeFIConfig(device="cpu", **official_random_config_overrides())
    config.input_features = {k: PolicyFeature(FeatureType.VISUAL, s) for k, s in CALVIN_CAMERAS.items()}
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (7,))}
    policy = DeFIPolicy(config, pretrained_dir=tmp_path)  # frozen parts are meta skeletons
    generator = torch.Generator().manual_seed(0)
    official = {name: torch.randn(shape, generator=generator) for name, shape in OFFICIAL_KEYS.items()}
    trainable = {k: v for k, v in policy.state_dict().items() if not k.startswith(("gfdm.", "text."))}

    result = map_state_dict(official, trainable, stage3_keymap())

    assert result.missing == [] and result.unused == {} and result.shape_mismatches == []
    assert set(result.skipped) == DEAD_TENSORS
    trainable_parameters = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    assert set(result.state) == set(trainable_parameters) and len(result.state) == 513
    assert sum(t.numel() for t in result.state.values()) == 156_841_607
    load = policy.load_state_dict(result.state, strict=False)
    assert load.unexpected_keys == [] and all(k.startswith(("gfdm.", "text.")) for k in load.missing_keys)
    # Independent statement of the mappings that shapes cannot check (same-shaped siblings), read off the
    # official module definitions: which norm precedes which sublayer, q/k/v order, used vs dead goal MLP.
    same_shaped = {
        "model.inner_model.lang_emb.2.bias": "action_head.goal_proj.2.bias",
        "model.inner_model.tok_emb.weight": "action_head.video_proj.weight",
        "model.inner_model.encoder.blocks.1.ln_1.weight": "action_head.context_blocks.1.norm_attention.weight",
        "model.inner_model.encoder.blocks.1.ln_2.weight": "action_head.context_blocks.1.norm_mlp.weight",
        "model.inner_model.encoder.blocks.1.attn.key.weight": "action_head.context_blocks.1.attention.key.weight",
        "model.inner_model.encoder.blocks.1.attn.c_proj.weight": "action_head.context_blocks.1.attention.out.weight",
        "model.inner_model.encoder.ln.weight": "action_head.context_norm.weight",
        "model.inner_model.decoder.blocks.3.ln_1.weight": "action_head.denoising_blocks.3.norm_self_attention.weight",
        "model.inner_model.decoder.blocks.3.ln_2.weight": "action_head.denoising_blocks.3.norm_mlp.weight",
        "model.inner_model.decoder.blocks.3.attn.query.bias": "action_head.denoising_blocks.3.self_attention.query.bias",
        "model.inner_model.decoder.blocks.3.cross_att.value.weight": (
            "action_head.denoising_blocks.3.cross_attention.value.weight"
        ),
        "model.inner_model.decoder.ln.weight": "action_head.output_norm.weight",
        "lam.encoder.transformer_blocks.11.norm1.bias": "gidm.blocks.11.norm_spatial.bias",
        "lam.encoder.transformer_blocks.11.norm2.bias": "gidm.blocks.11.norm_temporal.bias",
        "lam.encoder.transformer_blocks.11.norm3.bias": "gidm.blocks.11.norm_mlp.bias",
        "lam.encoder.transformer_blocks.4.spatial_attn.to_k.weight": "gidm.blocks.4.spatial_attention.key.weight",
        "lam.encoder.transformer_blocks.4.temporal_attn.to_v.weight": "gidm.blocks.4.temporal_attention.value.weight",
        "lam.encoder.ffn.0.weight": "gidm.input_projection.0.weight",
        "lam.encoder.ffn.2.weight": "gidm.input_projection.2.weight",
        "lam.lang_proj.weight": "gidm.text_projection.weight",
        "goal_emb.2.weight": "gidm_feature_proj.2.weight",
        "time_pos_emb": "gidm_frame_embedding",
        "Video_Former.latents": "video_former.queries",
        "Video_Former.time_pos_emb": "video_former.frame_embedding",
        "Video_Former.layers.5.0.norm_media.weight": "video_former.layers.5.perceiver.norm_media.weight",
        "Video_Former.layers.5.0.norm_latents.weight": "video_former.layers.5.perceiver.norm_latents.weight",
        "Video_Former.layers.5.0.to_k.weight": "video_former.layers.5.perceiver.to_k.weight",
        "Video_Former.layers.5.2.0.weight": "video_former.layers.5.mlp.0.weight",
        "Video_Former.norm.weight": "video_former.norm.weight",
    }
    for name, ours in same_shaped.items():
        assert torch.equal(policy.get_parameter(ours), official[name]), name


def test_key_map_renames_both_ways_skips_index_buffers_and_fills_ties():
    keymap = stage3_keymap()
    name = "model.inner_model.encoder.blocks.2.attn.c_proj.weight"
    assert keymap.ours(name) == "action_head.context_blocks.2.attention.out.weight"
    assert keymap.official("action_head.context_blocks.2.attention.out.weight") == name
    assert keymap.ours(name + ".extra") is None  # rules match whole tensors only
    ours = "gidm.blocks.7.temporal_attention.out.bias"
    assert keymap.official(ours) == "lam.encoder.transformer_blocks.7.temporal_attn.to_out.0.bias"
    position_ids = "TVP_encoder.text_encoder.text_model.embeddings.position_ids"
    assert keymap.skip_reason(position_ids) == "index buffer: rebuilt by transformers"
    assert "pretrained" in stage3_keymap(text_encoders_from_checkpoint=False).skip_reason(
        "lam.text_encoder.shared.weight"
    )

    shared = torch.randn(5, 4)
    expected = {
        "text.t5.shared.weight": torch.empty(5, 4),
        "text.t5.encoder.embed_tokens.weight": torch.empty(5, 4),
    }
    result = map_state_dict(
        {"lam.text_encoder.shared.weight": shared}, expected, keymap, tied=[list(expected)]
    )
    assert result.missing == [] and result.state["text.t5.encoder.embed_tokens.weight"] is shared


# --- a tiny release in the official formats -------------------------------------------------------------------


def save_tiny_svd_pipeline(folder: pathlib.Path) -> None:
    """The tiny preset's UNet and VAE in a complete SVD pipeline folder, as the release's checkpoint-100000 (with
    the image encoder, feature extractor, scheduler and model_index.json that the GFDM loader must ignore)."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    preset = load_preset("tiny")
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        projection_dim=16,
    )
    StableVideoDiffusionPipeline(
        vae=AutoencoderKLTemporalDecoder.from_config(preset.gfdm_vae_config),
        image_encoder=CLIPVisionModelWithProjection(vision),
        unet=UNetSpatioTemporalConditionModel.from_config(preset.gfdm_unet_config),
        scheduler=EulerDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True),
        feature_extractor=CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}),
    ).save_pretrained(folder)


def official_format_state_dict(source: DeFIPolicy) -> dict[str, torch.Tensor]:
    """The official Stage-3 state dict of ``source``: every name of the reference list that exists at the tiny
    depth, holding ``source``'s tensor; the dead tensors at official size; the frozen text encoders under their
    official prefixes and a stand-in for the redundant OpenAI CLIP copy."""
    ours = source.state_dict()
    keymap = stage3_keymap()
    official = {}
    for name, shape in OFFICIAL_KEYS.items():
        target = keymap.ours(name)
        if target in ours:
            official[name] = ours[target].clone()
        elif name in DEAD_TENSORS:
            official[name] = torch.randn(shape)
    for key, tensor in ours.items():
        if key.startswith("text.clip."):
            official["TVP_encoder.text_encoder." + key.removeprefix("text.clip.")] = tensor.clone()
        elif key.startswith("text.t5."):
            official["lam.text_encoder." + key.removeprefix("text.t5.")] = tensor.clone()
    official["language_goal.clip_rn50.token_embedding.weight"] = torch.randn(258, 32)
    official["language_goal.clip_rn50.text_projection"] = torch.randn(32, 32)
    return official


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    save_tiny_svd_pipeline(root / "checkpoint-100000")
    torch.manual_seed(1)
    source = DeFIPolicy(
        tiny_config(gfdm_path=str(root / "checkpoint-100000"), gfdm_unet_config=None, gfdm_vae_config=None)
    ).eval()
    official = official_format_state_dict(source)
    torch.save({"model": official, "args": HydraLikeConfig({"ep_len": 720})}, root / "last.pt")
    return SimpleNamespace(
        root=root, gfdm=root / "checkpoint-100000", stage3=root / "last.pt", source=source, official=official
    )


def calvin_observation() -> dict:
    generator = torch.Generator().manual_seed(2)
    return {
        "observation.images.static": torch.rand(3, 200, 200, generator=generator),
        "observation.images.gripper": torch.rand(3, 84, 84, generator=generator),
        "task": "open the drawer",
    }


def test_tiny_official_release_imports_through_the_command_and_acts(tiny_release, tmp_path):
    out = tmp_path / "defi_calvin"
    argv = ["policy", f"--stage3={tiny_release.stage3}", f"--gfdm={tiny_release.gfdm}"]
    assert main([*argv, "--policy_config=tiny", f"--output={out}"]) == 0

    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / REPORT_FILE).read_text())
    key_map = report["key_map"]
    assert key_map["missing_tensors"] == [] and key_map["unused_official_tensors"] == {}
    assert key_map["shape_mismatches"] == []
    assert report["trainable_tensors_filled"] == report["trainable_tensors"] > 0
    assert set(report["skipped"]) == DEAD_TENSORS | {
        "language_goal.clip_rn50.token_embedding.weight",
        "language_goal.clip_rn50.text_projection",
    }
    assert report["gfdm"]["ignored"] == [
        "feature_extractor",
        "image_encoder",
        "model_index.json",
        "scheduler",
    ]
    card = (out / "README.md").read_text()
    assert "zbzzbz/DeFI" in card and report["stage3"]["sha256"] in card and "720 steps" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

    policy = DeFIPolicy.from_pretrained(out)
    source_state = tiny_release.source.state_dict()
    imported_state = policy.state_dict()
    assert imported_state.keys() == source_state.keys()
    for name, tensor in imported_state.items():
        assert torch.equal(tensor, source_state[name]), name

    pre, post = make_pre_post_processors(PreTrainedConfig.from_pretrained(out), pretrained_path=out)
    noise = torch.randn(1, 10, 7, generator=torch.Generator().manual_seed(3))
    actions = []
    for candidate in (policy, tiny_release.source):
        candidate.config.feature_noise_seed = 4
        candidate.reset()
        actions.append(post(candidate.select_action(pre(calvin_observation()), noise=noise)))
    tiny_release.source.config.feature_noise_seed = None
    assert actions[0].shape == (1, 7) and torch.isfinite(actions[0]).all()
    assert actions[0][0, -1].item() in (-1.0, 1.0)
    torch.testing.assert_close(actions[0], actions[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda sd: sd.pop("lam.vq.codebook.weight"),
            r"gidm\.quantizer\.codebook\.weight \(official lam\.vq\.codebook\.weight is missing\)",
        ),
        (
            lambda sd: sd.__setitem__("model.inner_model.action_pred.weight", torch.zeros(8, 32)),
            r"model\.inner_model\.action_pred\.weight \(8, 32\) -> action_head\.action_out\.weight expects \(7, 32\)",
        ),
        (
            lambda sd: sd.pop("Video_Former.layers.0.1.qkv.bias"),
            r"video_former\.layers\.0\.temporal\.qkv\.bias \(official Video_Former\.layers\.0\.1\.qkv\.bias is missing\)",
        ),
    ],
    ids=["missing", "reshaped", "missing-video-former"],
)
def test_corrupted_stage3_checkpoint_fails_naming_the_tensor(tiny_release, tmp_path, corrupt, message):
    official = dict(tiny_release.official)
    corrupt(official)
    torch.save({"model": official, "args": {}}, tmp_path / "broken.pt")
    out = tmp_path / "out"
    with pytest.raises(OfficialCheckpointError, match=message):
        import_policy(tmp_path / "broken.pt", tiny_release.gfdm, out, config=load_preset("tiny"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt"]  # nothing written, no staging left


def test_unknown_official_tensor_is_reported_and_strict_refuses(tiny_release, tmp_path, capsys):
    official = dict(tiny_release.official)
    official["model.inner_model.extra_head.weight"] = torch.zeros(3)
    torch.save({"model": official}, tmp_path / "extra.pt")
    common = [
        "policy",
        f"--stage3={tmp_path / 'extra.pt'}",
        f"--gfdm={tiny_release.gfdm}",
        "--policy_config=tiny",
    ]

    with pytest.raises(SystemExit) as exit_info:
        main([*common, f"--output={tmp_path / 'strict'}", "--strict=true"])
    assert exit_info.value.code == 2
    assert "model.inner_model.extra_head.weight: no rule in the key map" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()

    report = import_policy(
        tmp_path / "extra.pt", tiny_release.gfdm, tmp_path / "lenient", config=load_preset("tiny")
    )
    assert list(report["key_map"]["unused_official_tensors"]) == ["model.inner_model.extra_head.weight"]
    assert report["key_map"]["missing_tensors"] == []

    with pytest.raises(SystemExit) as exit_info:  # an existing folder is kept unless --overwrite
        main([*common, f"--output={tmp_path / 'lenient'}"])
    assert exit_info.value.code == 2 and "already exists" in capsys.readouterr().err
    assert main([*common, f"--output={tmp_path / 'lenient'}", "--overwrite=true"]) == 0


def test_text_encoders_from_their_pretrained_folders_when_the_checkpoint_lacks_them(tiny_release, tmp_path):
    source = tiny_release.source
    for name, model, tokenizer in (
        ("clip", source.text.clip, source.text.clip_tokenizer),
        ("t5", source.text.t5, source.text.t5_tokenizer),
    ):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    official = {
        k: v
        for k, v in tiny_release.official.items()
        if not k.startswith(("TVP_encoder.", "lam.text_encoder."))
    }
    torch.save({"model": official}, tmp_path / "no_text.pt")

    def config():
        paths = {"clip_text_path": str(tmp_path / "clip"), "t5_path": str(tmp_path / "t5")}
        return load_preset("tiny", clip_text_config=None, t5_config=None, **paths)

    with pytest.raises(
        OfficialCheckpointError,
        match=r"(?s)text\.clip\.\* \(21 tensors: official TVP_encoder\.text_encoder\.\* is absent.*--text_encoders=pretrained",
    ):
        import_policy(tmp_path / "no_text.pt", tiny_release.gfdm, tmp_path / "a", config=config())
    report = import_policy(
        tmp_path / "no_text.pt",
        tiny_release.gfdm,
        tmp_path / "b",
        config=config(),
        text_encoders="pretrained",
    )
    assert report["key_map"]["missing_tensors"] == []
    policy = DeFIPolicy.from_pretrained(tmp_path / "b")
    for name, tensor in source.text.state_dict().items():
        assert torch.equal(policy.text.state_dict()[name], tensor), name
    assert policy.text.t5_tokenizer("open").input_ids == source.text.t5_tokenizer("open").input_ids


# --- reading checkpoints safely -------------------------------------------------------------------------------


class RunsCodeWhenLoaded:
    def __init__(self, reducer):
        self.reducer = reducer

    def __reduce__(self):
        return self.reducer


def test_checkpoint_objects_load_inert_and_code_never_runs(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    marker = tmp_path / "marker"
    torch.save(
        {
            "model": {"w": torch.ones(2)},
            "args": HydraLikeConfig({"a": 1}),
            "hook": RunsCodeWhenLoaded((shutil.rmtree, (str(victim),))),
        },
        tmp_path / "objects.pt",
    )
    loaded = load_official_checkpoint(tmp_path / "objects.pt")
    assert torch.equal(loaded["model"]["w"], torch.ones(2))
    assert isinstance(loaded["args"], InertObject) and loaded["args"].state == {"values": {"a": 1}}
    assert isinstance(loaded["hook"], InertObject) and loaded["hook"].args == (str(victim),)
    assert victim.is_dir()  # shutil.rmtree was replaced by an inert stand-in, not called

    torch.save(
        {"model": {}, "hook": RunsCodeWhenLoaded((os.system, (f"touch {marker}",)))}, tmp_path / "evil.pt"
    )
    with pytest.raises(OfficialCheckpointError, match="should not be trusted"):
        load_official_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()

    torch.save({"state_dict": {"lam.x": torch.ones(1)}}, tmp_path / "lightning.ckpt")
    with pytest.raises(OfficialCheckpointError, match=r"a 'model' entry .* found \['state_dict'\]"):
        load_stage3_state_dict(tmp_path / "lightning.ckpt")


# --- the Stage-2 latent action model --------------------------------------------------------------------------


def official_lam_state_dict(
    dim: int,
    encoder_blocks: int,
    decoder_blocks: int,
    latent: int,
    codes: int,
    tokens: int,
    text: int,
    device=None,
) -> dict[str, torch.Tensor]:
    """Tensors named and shaped as the official Stage-2 ``lam`` module holds them (its encoder/decoder
    transformers, VQ, projections; with stand-ins for the frozen DINOv2 and T5), random values."""
    shapes: dict[str, tuple] = {"lam.action_latent": (1, 1, tokens, dim)}

    def linear(name, out_features, in_features):
        shapes[f"{name}.weight"] = (out_features, in_features)
        shapes[f"{name}.bias"] = (out_features,)

    def norm(name):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (dim,)

    def transformer(prefix, blocks, attentions, norms):
        norm(f"{prefix}.ffn.0")
        linear(f"{prefix}.ffn.1", dim, dim)
        norm(f"{prefix}.ffn.2")
        for i in range(blocks):
            block = f"{prefix}.transformer_blocks.{i}"
            for attention in attentions:
                for projection in ("to_q", "to_k", "to_v"):
                    shapes[f"{block}.{attention}.{projection}.weight"] = (dim, dim)
                linear(f"{block}.{attention}.to_out.0", dim, dim)
            linear(f"{block}.ffn.0", 4 * dim, dim)
            linear(f"{block}.ffn.3", dim, 4 * dim)
            for n in norms:
                norm(f"{block}.{n}")

    transformer("lam.encoder", encoder_blocks, ("spatial_attn", "temporal_attn"), ("norm1", "norm2", "norm3"))
    linear("lam.to_codebook", latent, dim)
    shapes["lam.vq.codebook.weight"] = (codes, latent)
    linear("lam.patch_up", dim, dim)
    linear("lam.action_up", dim, latent)
    if decoder_blocks:
        transformer("lam.decoder", decoder_blocks, ("spatial_attn",), ("norm1", "norm2"))
        linear("lam.decoder.out", dim, dim)
    linear("lam.lang_proj", dim, text)
    shapes["lam.text_encoder.shared.weight"] = (11, text)
    shapes["lam.dino_encoder.cls_token"] = (1, 1, dim)
    generator = torch.Generator().manual_seed(5)
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: torch.randn(s, generator=generator) for k, s in shapes.items()}


def test_official_lam_helper_matches_the_reference_key_list():
    """The helper that writes Stage-2 test files agrees with the reference list on every tensor Stage 3 keeps."""
    full = official_lam_state_dict(768, 12, 0, 128, 16, 4, 768, device="meta")
    stage3_side = {
        k: tuple(v.shape)
        for k, v in full.items()
        if not k.startswith(("lam.patch_up", "lam.text_encoder", "lam.dino_encoder"))
    }
    reference = {k: tuple(s) for k, s in OFFICIAL_KEYS.items() if k.startswith("lam.")}
    assert stage3_side == reference


def test_official_latent_action_checkpoint_imports_into_our_gidm_and_initialises_a_policy(tmp_path):
    state = official_lam_state_dict(
        dim=32, encoder_blocks=2, decoder_blocks=1, latent=8, codes=16, tokens=4, text=32
    )
    checkpoint = {
        "epoch": 19,
        "global_step": 200_000,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}],
        "hyper_parameters": {"lam": HydraLikeConfig({"model_dim": 32})},
    }
    torch.save(checkpoint, tmp_path / "lam.ckpt")
    out = tmp_path / "gidm"
    argv = ["gidm", f"--ckpt={tmp_path / 'lam.ckpt'}", f"--output={out}", "--num_heads=2"]
    assert main([*argv, "--num_patches=64"]) == 0

    model = LatentActionModel.from_pretrained(out)
    cfg = model.config
    assert (cfg.model_dim, cfg.num_heads, cfg.encoder_blocks, cfg.decoder_blocks) == (32, 2, 2, 1)
    assert (cfg.latent_dim, cfg.codebook_size, cfg.num_latent_tokens, cfg.num_patches, cfg.text_dim) == (
        8,
        16,
        4,
        64,
        32,
    )
    pairs = {
        "lam.action_latent": model.encoder.action_queries,
        "lam.encoder.transformer_blocks.1.temporal_attn.to_out.0.bias": model.encoder.blocks[
            1
        ].temporal_attention.out.bias,
        "lam.encoder.transformer_blocks.0.norm2.weight": model.encoder.blocks[0].norm_temporal.weight,
        "lam.vq.codebook.weight": model.encoder.quantizer.codebook.weight,
        "lam.patch_up.weight": model.decoder.patch_up.weight,
        "lam.decoder.transformer_blocks.0.norm2.bias": model.decoder.blocks[0].norm_mlp.bias,
        "lam.decoder.out.weight": model.decoder.output_projection.weight,
        "lam.lang_proj.bias": model.encoder.text_projection.bias,
    }
    for name, parameter in pairs.items():
        assert torch.equal(parameter, state[name]), name
    report = json.loads((out / REPORT_FILE).read_text())
    assert set(report["skipped"]) == {"lam.text_encoder.shared.weight", "lam.dino_encoder.cls_token"}
    assert report["key_map"]["unused_official_tensors"] == {} and report["key_map"]["missing_tensors"] == []
    frames = torch.randn(2, 2, 64, 32)
    assert model(frames, torch.randn(2, 5, 32), torch.ones(2, 5))["reconstruction"].shape == (2, 64, 32)

    policy = DeFIPolicy(tiny_config(gidm_path=str(out)))  # the imported GIDM as a new policy's starting point
    assert policy.config.gidm.encoder_blocks == 2
    assert torch.equal(
        policy.gidm.blocks[1].spatial_attention.query.weight,
        state["lam.encoder.transformer_blocks.1.spatial_attn.to_q.weight"],
    )


def test_corrupted_latent_action_checkpoint_fails_naming_the_tensor(tmp_path):
    state = official_lam_state_dict(
        dim=32, encoder_blocks=1, decoder_blocks=1, latent=8, codes=16, tokens=4, text=32
    )
    del state["lam.decoder.out.weight"]
    torch.save({"state_dict": state}, tmp_path / "lam.ckpt")
    match = r"decoder\.output_projection\.weight \(official lam\.decoder\.out\.weight is missing\)"
    with pytest.raises(OfficialCheckpointError, match=match):
        import_gidm(tmp_path / "lam.ckpt", tmp_path / "gidm", num_heads=2, num_patches=64)
    torch.save({"model": state}, tmp_path / "stage3_like.pt")
    with pytest.raises(OfficialCheckpointError, match=r"'state_dict' entry"):
        import_gidm(tmp_path / "stage3_like.pt", tmp_path / "gidm", num_heads=2)
    assert not (tmp_path / "gidm").exists()


# --- the GFDM folder ------------------------------------------------------------------------------------------


def test_gfdm_folder_reads_as_is_and_slim_copy_gives_the_same_features(tiny_release, tmp_path):
    info = import_gfdm(tiny_release.gfdm, tmp_path / "gfdm")
    assert info["pipeline_class"] == "StableVideoDiffusionPipeline"
    assert info["ignored"] == ["feature_extractor", "image_encoder", "model_index.json", "scheduler"]
    assert info["feature_channels"] == 128 and not info["matches_official_policy"]
    assert sorted(p.name for p in (tmp_path / "gfdm").iterdir()) == [
        "README.md",
        REPORT_FILE,
        "scheduler",
        "unet",
        "vae",
    ]
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    context = torch.randn(1, 20, 64)
    features = [
        GFDMFeatureExtractor.from_pretrained(folder, dtype=torch.float32, num_frames=4)(
            images, context, generator=torch.Generator().manual_seed(0)
        )
        for folder in (tiny_release.gfdm, tmp_path / "gfdm")
    ]
    assert features[0].shape == (1, 4, 128, 8, 8)
    torch.testing.assert_close(features[0], features[1], rtol=0, atol=0)


def test_bad_gfdm_folder_is_named(tiny_release, tmp_path):
    broken = tmp_path / "no_vae"
    shutil.copytree(tiny_release.gfdm, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match=r"missing \['vae/config.json'\]"):
        import_gfdm(broken)
    shutil.copytree(tiny_release.gfdm / "vae", broken / "vae")
    config = json.loads((broken / "unet" / "config.json").read_text())
    (broken / "unet" / "config.json").write_text(
        json.dumps({**config, "_class_name": "UNet2DConditionModel"})
    )
    with pytest.raises(OfficialCheckpointError, match="expected a UNetSpatioTemporalConditionModel"):
        import_gfdm(broken)


def test_push_to_hub_uploads_the_written_folder(tiny_release, tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, exist_ok, repo_type="model"):
            calls.append(("create", repo_id, private, exist_ok))
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, repo_type, commit_message, revision=None):
            calls.append(("upload", repo_id, folder_path, repo_type))
            return SimpleNamespace(repo_url=SimpleNamespace(url=f"https://hub/{repo_id}"))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    out = tmp_path / "gfdm"
    assert (
        main(
            [
                "gfdm",
                f"--folder={tiny_release.gfdm}",
                f"--output={out}",
                "--push_to_hub=true",
                "--hub_repo_id=me/defi-gfdm",
            ]
        )
        == 0
    )
    assert calls == [("create", "me/defi-gfdm", False, True), ("upload", "me/defi-gfdm", str(out), "model")]

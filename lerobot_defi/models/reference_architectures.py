"""Architecture dicts of the public models DeFI builds on, for building official-size networks offline
(random weights, meta-device size checks, benchmarks). Values from their Hub configs (docs/method.md §1.3, §2.1).
"""

# stabilityai/stable-video-diffusion-img2vid: unet/config.json
SVD_UNET = dict(
    addition_time_embed_dim=256,
    block_out_channels=[320, 640, 1280, 1280],
    cross_attention_dim=1024,
    down_block_types=["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    in_channels=8,
    layers_per_block=2,
    num_attention_heads=[5, 10, 20, 20],
    num_frames=14,
    out_channels=4,
    projection_class_embeddings_input_dim=768,
    sample_size=96,
    transformer_layers_per_block=1,
    up_block_types=["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
)

# stabilityai/stable-video-diffusion-img2vid: vae/config.json
SVD_VAE = dict(
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    in_channels=3,
    latent_channels=4,
    layers_per_block=2,
    out_channels=3,
    sample_size=768,
)

# openai/clip-vit-base-patch32: text_config
CLIP_B32_TEXT = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    projection_dim=512,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)

# facebook/dinov2-with-registers-base (the GIDM's frozen patch encoder)
DINOV2_BASE_REG = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
    num_register_tokens=4,
    layerscale_value=1.0,
)

# google-t5/t5-base (encoder)
T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)


def official_random_config_overrides() -> dict:
    """``DeFIConfig`` fields that build the official-size policy from these architectures, with random
    weights and offline byte-level tokenizers (benchmarks and size tests; not a model to deploy)."""
    return {
        "gfdm_path": None,
        "gfdm_unet_config": dict(SVD_UNET),
        "gfdm_vae_config": dict(SVD_VAE),
        "clip_text_path": None,
        "clip_text_config": dict(CLIP_B32_TEXT),
        "t5_path": None,
        "t5_config": dict(T5_BASE),
    }

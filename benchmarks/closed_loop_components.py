"""Seeded random stand-ins for the pretrained networks DeFI starts from (SVD's UNet and VAE, the CLIP text tower,
T5, DINOv2 with registers), written in the layout of their Hub counterparts, for ``closed_loop_calvin.py``:
pretrained weights cannot be downloaded on the benchmark machines, so every policy starts from scratch."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def component_configs(name: str) -> dict[str, dict]:
    """Architectures of the stand-ins: a ``configs/`` YAML (unet, vae, clip_text, t5, dinov2), or ``tiny`` for the
    networks of the tiny presets."""
    import yaml

    if name != "tiny":
        return yaml.safe_load((CONFIGS / name).read_text())
    defi = yaml.safe_load((CONFIGS / "defi_tiny.yaml").read_text())["policy"]
    gidm = yaml.safe_load((CONFIGS / "gidm_tiny.yaml").read_text())
    return {
        "unet": defi["gfdm_unet_config"],
        "vae": defi["gfdm_vae_config"],
        "clip_text": defi["clip_text_config"],
        "t5": defi["t5_config"],
        "dinov2": gidm["dinov2_config"],
    }


def write_stand_in_components(configs: dict[str, dict], out: Path, seed: int) -> None:
    """Seeded random stand-ins for SVD (``svd_init/``: ``unet/``, ``vae/``), the CLIP text tower
    (``clip_text/``), T5 (``t5/``) and DINOv2 with registers (``dinov2/``), each saved with its tokenizer or
    config in the layout its pretrained counterpart has on the Hub."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import AutoConfig, AutoModel

    from lerobot_defi.models.text import load_clip_text, load_t5

    torch.manual_seed(seed)
    UNetSpatioTemporalConditionModel.from_config(configs["unet"]).save_pretrained(out / "svd_init" / "unet")
    vae = AutoencoderKLTemporalDecoder.from_config(configs["vae"])
    match_svd_latent_scale(vae, seed)
    vae.save_pretrained(out / "svd_init" / "vae")
    for name, loader in (("clip_text", load_clip_text), ("t5", load_t5)):
        model, tokenizer, _ = loader(None, configs[name])
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    dinov2 = dict(configs["dinov2"])
    model_type = dinov2.pop("model_type", "dinov2_with_registers")
    AutoModel.from_config(AutoConfig.for_model(model_type, **dinov2)).save_pretrained(out / "dinov2")


def match_svd_latent_scale(vae, seed: int, image_size: int = 64, samples: int = 16) -> float:
    """Scale a random VAE's encoder so the posterior-mode latents of images have the spread of SVD's VAE: std
    ``1 / scaling_factor`` (about 5.5). The GFDM reads these latents unscaled next to unit-variance noise at
    σ = 700 (docs/method.md §4.3b); a freshly initialised VAE gives latents of std ~0.2, so the image would be
    ~25x weaker than the noise and the frozen GFDM's features would hardly depend on the scene. Calibrated on
    smooth random images (bilinear upsampling of 8 x 8 noise); returns the factor applied to the mean half of
    ``quant_conv``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(samples, 3, 8, 8, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, size=image_size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
        factor = (1.0 / vae.config.scaling_factor) / latents.std().item()
        channels = vae.config.latent_channels
        vae.quant_conv.weight[:channels] *= factor
        vae.quant_conv.bias[:channels] *= factor
    return factor

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
    from diffusers import UNetSpatioTemporalConditionModel
    from transformers import AutoConfig, AutoModel

    from lerobot_defi.models.text import load_clip_text, load_t5

    torch.manual_seed(seed)
    UNetSpatioTemporalConditionModel.from_config(configs["unet"]).save_pretrained(out / "svd_init" / "unet")
    calibrated_stand_in_vae(configs["vae"], seed).save_pretrained(out / "svd_init" / "vae")
    for name, loader in (("clip_text", load_clip_text), ("t5", load_t5)):
        model, tokenizer, _ = loader(None, configs[name])
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    dinov2 = dict(configs["dinov2"])
    model_type = dinov2.pop("model_type", "dinov2_with_registers")
    AutoModel.from_config(AutoConfig.for_model(model_type, **dinov2)).save_pretrained(out / "dinov2")


def calibrated_stand_in_vae(vae_config: dict, seed: int):
    """A random SVD-shaped VAE (seeded) whose latents have the spread of SVD's VAE (std ``1 / scaling_factor``):
    the GFDM reads them unscaled next to unit-variance noise at σ = 700 (docs/method.md §4.3b), and a freshly
    initialised VAE's latents (std ~0.2) would leave the frozen features blind to the scene
    (``lerobot_defi/models/latent_spread.py``)."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder

    from lerobot_defi.models.latent_spread import match_latent_spread

    torch.manual_seed(seed)
    vae = AutoencoderKLTemporalDecoder.from_config(vae_config)
    match_latent_spread(vae, seed=seed)
    return vae

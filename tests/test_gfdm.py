"""GFDM feature extractor: truncation, taps equal to the full diffusers UNet's activations, shapes
(docs/method.md §4.3b). The video side (objective, sampler, pipeline): ``test_gfdm_video.py``."""

import copy
import math

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

from lerobot_defi.models.gfdm import (
    GFDMFeatureExtractor,
    check_gfdm_folder,
    text_context_from_clip,
)
from lerobot_defi.models.reference_architectures import SVD_UNET, SVD_VAE
from lerobot_defi.policy.configuration_defi import load_preset


def tiny_models():
    cfg = load_preset("tiny")
    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel.from_config(
        cfg.gfdm_unet_config
    ), AutoencoderKLTemporalDecoder.from_config(cfg.gfdm_vae_config)


def test_official_size_truncation_shapes_and_parameters():
    with init_empty_weights():
        unet = UNetSpatioTemporalConditionModel(**SVD_UNET)
        vae = AutoencoderKLTemporalDecoder(**SVD_VAE)
        assert sum(p.numel() for p in unet.parameters()) == 1_524_623_082  # docs/method.md §2.1
        extractor = GFDMFeatureExtractor(unet, vae)
    assert extractor.feature_dim == 2560
    assert extractor.feature_grid(256) == 16 and extractor.latent_downsample == 8
    assert len(extractor.unet.up_blocks) == 2 and not hasattr(extractor.unet, "conv_out")
    assert not hasattr(extractor.vae, "decoder")
    executed = sum(p.numel() for p in extractor.unet.parameters())
    # docs/method.md §6.1: conv_in, embeddings, down, mid, up0, up1
    assert executed == pytest.approx(1355.6e6, rel=1e-4)
    assert sum(p.numel() for p in extractor.vae.parameters()) == pytest.approx(34.2e6, rel=1e-2)


def test_taps_equal_the_full_unet_activations():
    unet, vae = tiny_models()
    full = copy.deepcopy(unet).eval()
    extractor = GFDMFeatureExtractor(
        unet,
        vae,
        num_frames=4,
        feature_up_blocks=(0, 1),
        feature_sigma=700.0,
        added_time_ids=(4.0, 127.0, 0.0),
    )
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    context = torch.randn(2, 20, 64)
    generator = torch.Generator().manual_seed(1)
    features = extractor(images, context, generator=generator)
    assert features.shape == (2, 4, 128, 8, 8) and features.dtype == torch.float32

    # Reference: the untouched diffusers UNet with hooks on up_blocks[0] and [1], same inputs.
    taps = {}
    for i in (0, 1):
        full.up_blocks[i].register_forward_hook(lambda m, a, out, i=i: taps.__setitem__(i, out))
    condition = extractor.encode_condition(images)
    noise = torch.randn((2, 4, 4, 16, 16), generator=torch.Generator().manual_seed(1))
    sample = torch.cat([noise, condition[:, None].expand(-1, 4, -1, -1, -1)], dim=2)
    added = torch.tensor([[4.0, 127.0, 0.0]] * 2)
    with torch.no_grad():
        full(sample, torch.tensor(math.log(700.0) / 4), context, added)
    up0 = torch.nn.functional.interpolate(taps[0], size=(8, 8), mode="nearest")
    expected = torch.cat([up0, taps[1]], dim=1).reshape(2, 4, 128, 8, 8)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_condition_is_unscaled_posterior_mode_and_features_are_stochastic():
    unet, vae = tiny_models()
    reference_vae = copy.deepcopy(vae)
    extractor = GFDMFeatureExtractor(unet, vae, num_frames=4)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            extractor.encode_condition(images), reference_vae.encode(images).latent_dist.mode()
        )
    context = torch.randn(1, 20, 64)
    assert not torch.allclose(
        extractor(images, context), extractor(images, context)
    )  # fresh noise (official)
    same = [extractor(images, context, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    torch.testing.assert_close(same[0], same[1])


def test_text_context_duplication_and_errors(tmp_path):
    hidden = torch.randn(2, 20, 512)
    context = text_context_from_clip(hidden, 1024)
    assert context.shape == (2, 20, 1024)
    torch.testing.assert_close(context[..., :512], hidden)
    torch.testing.assert_close(context[..., 512:], hidden)
    with pytest.raises(ValueError, match="multiple"):
        text_context_from_clip(hidden, 1000)
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing \['unet/config.json', 'vae/config.json'\]"):
        check_gfdm_folder(tmp_path)


def test_save_pretrained_folder_loads_back(tmp_path):
    unet, vae = tiny_models()
    unet.save_pretrained(tmp_path / "gfdm" / "unet")
    vae.save_pretrained(tmp_path / "gfdm" / "vae")
    extractor = GFDMFeatureExtractor.from_pretrained(tmp_path / "gfdm", dtype=torch.float32, num_frames=4)
    torch.testing.assert_close(extractor.unet.conv_in.weight, unet.conv_in.weight)
    assert not any(p.requires_grad for p in extractor.parameters())

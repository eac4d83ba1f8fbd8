"""Video Former: shapes, official parameter count, cross-frame mixing (docs/method.md §4.3d, §6.1)."""

import pytest
import torch

from lerobot_defi.models.video_former import VideoFormer, VideoFormerConfig


def test_official_size_parameter_count():
    with torch.device("meta"):
        model = VideoFormer(VideoFormerConfig(), feature_dim=2560, num_frames=16)
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(17.71e6, rel=1e-3)
    assert sum(p.numel() for p in model.input_mlp.parameters()) == pytest.approx(2.26e6, rel=1e-2)
    layer = model.layers[0]
    assert sum(p.numel() for p in layer.perceiver.parameters()) == pytest.approx(0.79e6, rel=1e-2)
    assert sum(p.numel() for p in layer.temporal.parameters()) == pytest.approx(0.59e6, rel=1e-2)
    assert model.queries.shape == (16, 14, 384) and model.frame_embedding.shape == (16, 1, 384)


def test_shapes_frame_major_tokens_and_temporal_mixing():
    torch.manual_seed(0)
    cfg = VideoFormerConfig(
        dim=32, depth=2, num_heads=2, head_dim=16, queries_per_frame=3, input_hidden_dim=48
    )
    model = VideoFormer(cfg, feature_dim=40, num_frames=4).eval()
    features = torch.randn(2, 4, 2 * 9, 40)  # 2 cameras x 9 tokens per frame
    out = model(features)
    assert out.shape == (2, 4 * 3, 32)
    # Changing the last frame's features reaches the first frame's tokens (bidirectional temporal attention)...
    changed = features.clone()
    changed[:, -1] += 1.0
    out2 = model(changed)
    assert not torch.allclose(out[:, :3], out2[:, :3])
    # ...but never another sample of the batch.
    torch.testing.assert_close(model(features[:1]), out[:1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="4 frames"):
        model(torch.randn(1, 5, 18, 40))


def test_temporal_prenorm_flag_adds_a_norm():
    cfg = VideoFormerConfig(
        dim=32, depth=1, num_heads=2, head_dim=16, queries_per_frame=2, input_hidden_dim=32
    )
    official = VideoFormer(cfg, 8, 2)
    assert isinstance(official.layers[0].temporal.norm, torch.nn.Identity)
    cfg.temporal_prenorm = True
    assert isinstance(VideoFormer(cfg, 8, 2).layers[0].temporal.norm, torch.nn.LayerNorm)

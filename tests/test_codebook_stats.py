"""Codebook statistics: counts, usage and perplexity (docs/method.md §3.2)."""

import pytest
import torch

from lerobot_defi.models.codebook_stats import code_counts, codebook_stats, perplexity


def test_counts_usage_and_perplexity():
    counts = code_counts(torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]]), 8)
    assert counts.tolist() == [4, 4, 0, 0, 0, 0, 0, 0]
    assert codebook_stats(counts) == {"codebook_usage": 0.25, "codebook_perplexity": pytest.approx(2.0)}
    assert float(perplexity(torch.ones(8))) == pytest.approx(8.0)
    assert float(perplexity(torch.tensor([5, 0, 0]))) == pytest.approx(1.0)
    assert float(perplexity(torch.zeros(4))) == 0.0  # nothing counted yet

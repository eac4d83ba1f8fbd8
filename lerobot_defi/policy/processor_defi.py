"""Processors of the ``defi`` policy (docs/method.md §4.2, §9).

Pre: rename -> batch -> device -> normalize -> images resized to ``image_size`` as 8-bit images (antialiased,
rounded to whole pixel levels, as the original) and mapped from [0, 1] to [-1, 1]. Post: unnormalize ->
gripper binarised by sign (optional) -> CPU.
The standard steps keep their LeRobot registry names, which ``lerobot-eval`` and fine-tuning override.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lerobot.configs.types import PipelineFeatureType, PolicyFeature
from lerobot.lerobot_types import PolicyAction
from lerobot.processor import (
    ObservationProcessorStep,
    PolicyActionProcessorStep,
    PolicyProcessorPipeline,
    ProcessorStepRegistry,
)
from lerobot.processor.factory import make_default_policy_processor_steps, make_policy_processor_pipelines
from torch import Tensor

from lerobot_defi.policy.configuration_defi import DeFIConfig


def resize_8bit(image: Tensor, size: int) -> Tensor:
    """``(B, 3, H, W)`` in [0, 1] holding 8-bit pixels -> ``(B, 3, size, size)`` in [0, 1], the way the original
    resizes its uint8 images (torchvision ``Resize(antialias=True)`` on a uint8 tensor, then ``/ 255``): pixels
    back to 0..255 (exact for images decoded from uint8), bilinear antialiased interpolation in float32, rounded
    half to even to whole levels, then ``/ 255`` in the input's dtype. Resizing the floats directly differs by up
    to 1/255 (docs/method.md §4.2)."""
    levels = (image * 255).round().clamp(0, 255).float()
    resized = F.interpolate(levels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(image.dtype) / 255


@ProcessorStepRegistry.register(name="defi_image_processor")
@dataclass
class DeFIImageProcessorStep(ObservationProcessorStep):
    """Camera images ``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, size, size)`` in [-1, 1] (resized as 8-bit images
    with :func:`resize_8bit`; an image already at ``size`` is only mapped to [-1, 1])."""

    image_keys: list[str]
    size: int = 256

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        for key in self.image_keys:
            if key not in observation:
                raise KeyError(
                    f"DeFI expects camera {key!r} in the observation; got keys {sorted(observation)}. "
                    "Use --rename_map to map your cameras to the policy's names."
                )
            image = observation[key]
            if image.shape[-2:] != (self.size, self.size):
                image = resize_8bit(image, self.size)
            observation[key] = image * 2.0 - 1.0
        return observation

    def get_config(self) -> dict[str, Any]:
        return {"image_keys": list(self.image_keys), "size": self.size}

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        observation = features.get(PipelineFeatureType.OBSERVATION, {})
        for key in self.image_keys:
            if key in observation:
                observation[key] = PolicyFeature(type=observation[key].type, shape=(3, self.size, self.size))
        return features


@ProcessorStepRegistry.register(name="defi_binarize_gripper")
@dataclass
class BinarizeGripperProcessorStep(PolicyActionProcessorStep):
    """Gripper channel -> +1 (open) if > 0 else -1 (close), as the official rollout does
    (docs/method.md §5.2, §8.24)."""

    gripper_index: int = -1

    def action(self, action: PolicyAction) -> PolicyAction:
        action = action.clone()
        gripper = action[..., self.gripper_index]
        action[..., self.gripper_index] = torch.where(gripper > 0, 1.0, -1.0).to(action.dtype)
        return action

    def get_config(self) -> dict[str, Any]:
        return {"gripper_index": self.gripper_index}

    def transform_features(self, features):
        return features


def make_defi_pre_post_processors(
    config: DeFIConfig, dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None
) -> tuple[PolicyProcessorPipeline, PolicyProcessorPipeline]:
    """The (preprocessor, postprocessor) pair of a DeFI policy."""
    steps = make_default_policy_processor_steps(config, dataset_stats)
    images = DeFIImageProcessorStep(image_keys=config.cameras, size=config.image_size)
    output_steps = [steps.unnormalize]
    if config.decide_binarize_gripper(dataset_stats):
        output_steps.append(BinarizeGripperProcessorStep(gripper_index=config.gripper_action_index))
    output_steps.append(steps.to_cpu)
    return make_policy_processor_pipelines(
        input_steps=[
            steps.rename_observations,
            steps.add_batch_dim,
            steps.to_device,
            steps.normalize,
            images,
        ],
        output_steps=output_steps,
    )

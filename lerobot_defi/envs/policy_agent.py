"""Any LeRobot policy acting on single (unbatched) env observations, with its processors.

This is the per-step path of ``lerobot-eval``'s rollout for one environment: raw observation ->
``preprocess_observation`` (LeRobot keys, float CHW images, batch of 1) -> ``task`` -> env
preprocessor -> policy preprocessor -> ``select_action`` -> policy postprocessor -> env
postprocessor -> a numpy action.
"""

import logging
from typing import Any

import numpy as np
import torch
from lerobot.configs import PreTrainedConfig
from lerobot.envs import make_env_pre_post_processors, preprocess_observation
from lerobot.envs.configs import EnvConfig
from lerobot.policies import PreTrainedPolicy, make_policy, make_pre_post_processors
from lerobot.utils.constants import ACTION

logger = logging.getLogger(__name__)


class PolicyAgent:
    """A LeRobot policy plus the four processor pipelines around it; ``act`` returns an (A,) action."""

    def __init__(
        self, policy: PreTrainedPolicy, preprocessor, postprocessor, env_preprocessor, env_postprocessor
    ):
        self.policy = policy
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.env_preprocessor = env_preprocessor
        self.env_postprocessor = env_postprocessor

    def reset(self) -> None:
        """Forget the past (action queues, observation history): called at every new instruction."""
        self.policy.reset()

    @torch.inference_mode()
    def act(self, observation: dict[str, Any], instruction: str) -> np.ndarray:
        """One action, (A,) float32, for one raw env observation and its language instruction."""
        batch = preprocess_observation(observation)
        batch["task"] = [instruction]
        batch = self.env_preprocessor(batch)
        batch = self.preprocessor(batch)
        action = self.policy.select_action(batch)
        action = self.postprocessor(action)
        action = self.env_postprocessor({ACTION: action})[ACTION]
        action = action.to("cpu").numpy()
        if action.ndim != 2 or action.shape[0] != 1:
            raise ValueError(f"the policy returned an action batch of shape {action.shape}; expected (1, A)")
        return action[0].astype(np.float32)


def build_policy_agent(
    policy_cfg: PreTrainedConfig, env_cfg: EnvConfig, rename_map: dict[str, str] | None = None
) -> PolicyAgent:
    """Load the policy (``policy_cfg.pretrained_path``, or random weights without one) and its processors."""
    rename_map = rename_map or {}
    policy = make_policy(cfg=policy_cfg, env_cfg=env_cfg, rename_map=rename_map)
    policy.eval()
    preprocessor, postprocessor = make_pre_post_processors(
        policy_cfg=policy_cfg,
        pretrained_path=policy_cfg.pretrained_path,
        preprocessor_overrides={
            "device_processor": {"device": str(policy.config.device)},
            "rename_observations_processor": {"rename_map": rename_map},
        },
    )
    env_preprocessor, env_postprocessor = make_env_pre_post_processors(env_cfg=env_cfg, policy_cfg=policy_cfg)
    return PolicyAgent(policy, preprocessor, postprocessor, env_preprocessor, env_postprocessor)

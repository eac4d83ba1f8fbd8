"""Importing this module registers DeFI with LeRobot.

LeRobot's plugin discovery imports every installed distribution whose name starts with
``lerobot_policy_``; this shim is what it imports. It registers the ``defi`` policy type (config,
policy class and processor factory, found by LeRobot's naming convention) and the ``calvin`` env type.
"""

from lerobot_defi.envs import CalvinEnvConfig
from lerobot_defi.policy.configuration_defi import DeFIConfig
from lerobot_defi.policy.modeling_defi import DeFIPolicy
from lerobot_defi.policy.processor_defi import make_defi_pre_post_processors

__all__ = ["CalvinEnvConfig", "DeFIConfig", "DeFIPolicy", "make_defi_pre_post_processors"]

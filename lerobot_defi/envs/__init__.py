"""CALVIN for LeRobot: the ``calvin`` env type and the long-horizon benchmark.

Importing this package registers ``--env.type=calvin``; it imports neither calvin_env nor PyBullet
(the simulator is built on an env's first reset).
"""

from lerobot_defi.envs.configuration_calvin import CalvinEnvConfig

__all__ = ["CalvinEnvConfig"]

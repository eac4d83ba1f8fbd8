"""LeRobot glue: the ``defi`` policy type (configuration, modeling, processors).

Importing any of these modules registers the whole policy type, including its processor steps, which
``make_pre_post_processors(..., pretrained_path=...)`` needs to rebuild a saved pipeline.
"""

from lerobot_defi.policy import configuration_defi, modeling_defi, processor_defi  # noqa: F401

"""LeRobot glue: the ``defi`` policy type (configuration, modeling, processors)."""

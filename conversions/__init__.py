"""Converters from raw robot/video datasets (CALVIN, Open X-Embodiment RLDS, VPP) to LeRobotDataset v3."""

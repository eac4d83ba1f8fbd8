"""Pure torch / diffusers / transformers building blocks of DeFI (no LeRobot imports here)."""

"""Ready-made configuration presets (installed as ``lerobot_defi.presets``)."""

from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent


def preset_path(name: str) -> Path:
    """Path of a shipped preset file, e.g. ``preset_path("defi_tiny.yaml")``."""
    path = PRESETS_DIR / name
    if not path.is_file():
        available = sorted(p.name for p in PRESETS_DIR.iterdir() if p.suffix in {".yaml", ".json"})
        raise FileNotFoundError(f"No preset named {name!r} in {PRESETS_DIR}; available: {available}")
    return path

"""``lerobot-defi-convert <source> [--option=value ...]``: one command for every converter.

Each converter module exposes ``main(argv: list[str] | None) -> int``; its options are the fields of its config
dataclass, written in LeRobot's draccus style (``--raw_dir=...``, ``--skip_bad=true``, lists as ``'[a,b]'``).
"""

import importlib
import sys

CONVERTERS = {
    "calvin": ("lerobot_defi.conversions.calvin", "CALVIN split folder (episode_*.npz) -> LeRobotDataset"),
    "vpp": (
        "lerobot_defi.conversions.vpp",
        "VPP annotation JSON + videos -> LeRobotDataset ('vpp export': back)",
    ),
    "oxe": ("lerobot_defi.conversions.oxe", "Open X-Embodiment RLDS builder dir -> LeRobotDataset"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in CONVERTERS:
        lines = [f"  {name:8s} {help_}" for name, (_, help_) in CONVERTERS.items()]
        print(
            "usage: lerobot-defi-convert {"
            + ",".join(CONVERTERS)
            + "} --option=value ...\n\n"
            + "\n".join(lines)
            + "\n\nOptions of a source: lerobot-defi-convert <source> --help"
        )
        if argv and argv[0] not in {"-h", "--help"}:
            print(f"\nerror: unknown source {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(CONVERTERS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

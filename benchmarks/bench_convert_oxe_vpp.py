"""Throughput of the OXE and VPP converters: source reading alone, and end to end into a LeRobotDataset.

Uses shared/data (oxe_bridge_debug, vpp_samples) when present, else the small slices under tests/data.
Prints figures; asserts nothing. Run: ``python benchmarks/bench_convert_oxe_vpp.py``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lerobot_defi.conversions.oxe import convert_oxe
from lerobot_defi.conversions.oxe_episodes import plan_conversion, read_oxe_episode
from lerobot_defi.conversions.rlds_builder import RLDSBuilder
from lerobot_defi.conversions.rlds_reader import parse_example, read_record
from lerobot_defi.conversions.vpp import convert_vpp
from lerobot_defi.conversions.vpp_episodes import plan_vpp_conversion, read_vpp_episode
from lerobot_defi.conversions.vpp_format import find_annotations, read_annotation

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
OXE_DIR = SHARED / "oxe_bridge_debug" / "bridge_dataset" / "1.0.0"
if not OXE_DIR.is_dir():
    OXE_DIR = REPO / "tests" / "data" / "oxe_bridge_slice" / "bridge_dataset" / "1.0.0"
VPP_DIR = SHARED / "vpp_samples" / "bridge"
if not VPP_DIR.is_dir():
    VPP_DIR = REPO / "tests" / "data" / "vpp_slice" / "bridge"


def bench_oxe() -> None:
    builder = RLDSBuilder(OXE_DIR)
    plan = plan_conversion(builder)
    locations = builder.index("train")
    size_mb = sum(loc.length for loc in locations) / 1e6
    start = time.perf_counter()
    for loc in locations:
        parse_example(read_record(loc))
    parse_s = time.perf_counter() - start
    start = time.perf_counter()
    steps = sum(len(read_oxe_episode(plan, loc)["task"]) for loc in locations)
    decode_s = time.perf_counter() - start
    print(f"OXE {OXE_DIR.parent.name}: {len(locations)} episodes, {steps} steps, {size_mb:.1f} MB")
    print(f"  framing + CRC-32C + Example parse: {size_mb / parse_s:.0f} MB/s")
    print(
        f"  + JPEG decode + key mapping:        {size_mb / decode_s:.0f} MB/s, {steps / decode_s:.0f} steps/s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = convert_oxe(OXE_DIR, "bench/oxe", root=Path(tmp) / "ds", progress=False)
        total = time.perf_counter() - start
    print(f"  end to end into LeRobotDataset:     {report.total_frames / total:.0f} frames/s ({total:.2f} s)")


def bench_vpp() -> None:
    found = find_annotations(VPP_DIR)
    annotations = [read_annotation(path, VPP_DIR, split) for split, path in found]
    plan = plan_vpp_conversion(VPP_DIR, annotations[0])
    start = time.perf_counter()
    frames = sum(len(read_vpp_episode(plan, a)["task"]) for a in annotations)
    read_s = time.perf_counter() - start
    print(f"VPP {VPP_DIR.name}: {len(annotations)} episodes, {frames} frames")
    print(f"  decode + resize to 256x256:         {frames / read_s:.0f} frames/s")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = convert_vpp(VPP_DIR, "bench/vpp", root=Path(tmp) / "ds", progress=False, export_latents=True)
        total = time.perf_counter() - start
    print(f"  end to end into LeRobotDataset:     {report.total_frames / total:.0f} frames/s ({total:.2f} s)")


if __name__ == "__main__":
    bench_oxe()
    bench_vpp()

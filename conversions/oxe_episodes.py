"""Open X-Embodiment RLDS episodes -> standardized LeRobot frames (no writing; see ``oxe.py``).

Output keys (the same for every OXE dataset, so GIDM pretraining and the policy read one format):

* ``observation.images.primary`` - the dataset's primary (third-person) camera, ``(H, W, 3)`` uint8 video;
* ``observation.images.wrist``   - the wrist camera when the table names one and ``features.json`` has it;
* ``observation.state``          - the table's raw state fields concatenated, float32 ``(D_s,)``;
* ``action``                     - the table's raw action fields concatenated, float32 ``(D_a,)``;
* ``task``                       - the language instruction of the step (the episode's first non-empty
  instruction fills steps that have none).

``names`` of state/action list the source fields (``world_vector.0`` ... ``gripper_closedness_action.0``).
Which raw keys feed each output comes from ``oxe_datasets.OXE_DATASETS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .conversion_errors import SkipEpisode
from .oxe_datasets import OXEDatasetKeys, canonical_name, lookup
from .rlds_builder import Episode, FeatureSpec, RLDSBuilder, RLDSFormatError, decode_image
from .rlds_reader import RecordLocation

PRIMARY_KEY = "observation.images.primary"
WRIST_KEY = "observation.images.wrist"
STATE_KEY = "observation.state"
ACTION_KEY = "action"


class EpisodeWithoutLanguage(SkipEpisode):
    """An episode whose language instruction is empty in every step (skipped unless asked to keep it)."""


@dataclass
class OXEPlan:
    """What to read from one builder directory and how it maps to LeRobot features."""

    builder: RLDSBuilder
    dataset_name: str
    keys: OXEDatasetKeys
    fps: int
    wrist_image: str | None
    action_keys: tuple[str, ...]
    state_keys: tuple[str, ...]
    keep_unlabeled: bool = False
    verify_crc: bool = True

    def features(self) -> dict[str, dict]:
        """LeRobot ``features`` for ``LeRobotDataset.create``."""
        features = {PRIMARY_KEY: _video_feature(self.builder.spec(_steps(self.keys.primary_image)))}
        if self.wrist_image is not None:
            features[WRIST_KEY] = _video_feature(self.builder.spec(_steps(self.wrist_image)))
        if self.state_keys:
            names = _vector_names(self.builder, self.state_keys)
            features[STATE_KEY] = {"dtype": "float32", "shape": (len(names),), "names": names}
        if self.action_keys:
            names = _vector_names(self.builder, self.action_keys)
            features[ACTION_KEY] = {"dtype": "float32", "shape": (len(names),), "names": names}
        return features


def _steps(key: str) -> str:
    return f"steps/{key}"


def _video_feature(spec: FeatureSpec) -> dict:
    if spec.kind != "image" or len(spec.shape) != 3 or spec.shape[-1] != 3:
        raise RLDSFormatError(
            f"feature {spec.key!r} is not an RGB image (kind {spec.kind}, shape {spec.shape})"
        )
    return {"dtype": "video", "shape": tuple(spec.shape), "names": ["height", "width", "channels"]}


def _vector_names(builder: RLDSBuilder, keys: tuple[str, ...]) -> list[str]:
    names = []
    for key in keys:
        spec = builder.spec(_steps(key))
        if spec.kind != "tensor" or spec.dtype == "string" or spec.encoding not in {"none", "bytes", "zlib"}:
            raise RLDSFormatError(f"feature {spec.key!r} is not a numeric tensor ({spec.kind}, {spec.dtype})")
        size = int(np.prod(spec.shape))
        field = key.rsplit("/", 1)[-1]
        names.extend(f"{field}.{i}" for i in range(size)) if spec.shape else names.append(field)
    return names


def _present(builder: RLDSBuilder, keys: tuple[str, ...], what: str, name: str) -> tuple[str, ...]:
    """All of ``keys`` when features.json declares them all, () when none; a partial match is an error."""
    found = [k for k in keys if _steps(k) in builder.features]
    if len(found) == len(keys):
        return keys
    if not found:
        return ()
    missing = [k for k in keys if k not in found]
    raise RLDSFormatError(
        f"{builder.builder_dir / 'features.json'}: the {what} fields of {name!r} are {list(keys)} but "
        f"{missing} are not declared - is this the dataset the table row describes?"
    )


def plan_conversion(
    builder: RLDSBuilder,
    dataset_name: str | None = None,
    fps: int | None = None,
    keep_unlabeled: bool = False,
    verify_crc: bool = True,
) -> OXEPlan:
    """Resolve the table row for ``builder`` (or ``dataset_name``) against its ``features.json``."""
    name = canonical_name(dataset_name or builder.name)
    keys = lookup(name)
    builder.spec(_steps(keys.primary_image))  # raises naming features.json and the key
    wrist = keys.wrist_image if keys.wrist_image and _steps(keys.wrist_image) in builder.features else None
    if keys.language is not None:
        builder.spec(_steps(keys.language))
    if fps is None:
        fps = round(keys.control_frequency_hz)
    return OXEPlan(
        builder=builder,
        dataset_name=name,
        keys=keys,
        fps=int(fps),
        wrist_image=wrist,
        action_keys=_present(builder, keys.action, "action", name),
        state_keys=_present(builder, keys.state, "state", name),
        keep_unlabeled=keep_unlabeled,
        verify_crc=verify_crc,
    )


def _vector(builder: RLDSBuilder, episode: Episode, keys: tuple[str, ...]) -> np.ndarray:
    parts = [
        np.asarray(builder.decode(episode, _steps(k)), dtype=np.float32).reshape(episode.num_steps, -1)
        for k in keys
    ]
    return np.concatenate(parts, axis=1)


def _instructions(plan: OXEPlan, episode: Episode) -> list[str]:
    key = plan.keys.language
    if key is None:
        return [""] * episode.num_steps
    raw = plan.builder.decode(episode, _steps(key))
    if plan.keys.language_encoding == "utf8_codes":  # int tensor (T, N) of UTF-8 bytes, zero padded
        codes = np.asarray(raw).reshape(episode.num_steps, -1)
        return [
            bytes(int(c) for c in row if c != 0).decode("utf-8", errors="replace").strip() for row in codes
        ]
    return [text.strip() for text in raw]


def read_oxe_episode(plan: OXEPlan, location: RecordLocation) -> dict[str, np.ndarray | list[str]]:
    """Decode one RLDS episode -> ``{feature key: (T, ...) array, "task": [T str]}``.

    Raises ``EpisodeWithoutLanguage`` when no step has an instruction (unless ``plan.keep_unlabeled``).
    """
    builder = plan.builder
    episode = builder.read_episode(location, verify_crc=plan.verify_crc)
    tasks = _instructions(plan, episode)
    first = next((t for t in tasks if t), "")
    if not first and not plan.keep_unlabeled:
        raise EpisodeWithoutLanguage(
            f"{location.path} (record at byte {location.offset}): no language instruction"
        )
    frames: dict[str, np.ndarray | list[str]] = {"task": [t or first for t in tasks]}
    for out_key, raw_key in ((PRIMARY_KEY, plan.keys.primary_image), (WRIST_KEY, plan.wrist_image)):
        if raw_key is None:
            continue
        try:
            images = np.stack([decode_image(b) for b in builder.decode(episode, _steps(raw_key))])
        except (OSError, ValueError) as err:  # PIL: UnidentifiedImageError / truncated data
            if isinstance(err, RLDSFormatError):
                raise
            raise RLDSFormatError(
                f"{location.path} (record at byte {location.offset}), feature {_steps(raw_key)!r}: "
                f"an image cannot be decoded ({err})"
            ) from err
        expected = builder.spec(_steps(raw_key)).shape
        if images.shape[1:] != tuple(expected):
            raise RLDSFormatError(
                f"{location.path} (record at byte {location.offset}), feature {_steps(raw_key)!r}: decoded images "
                f"are {images.shape[1:]}, features.json declares {tuple(expected)}"
            )
        frames[out_key] = images
    if plan.state_keys:
        frames[STATE_KEY] = _vector(builder, episode, plan.state_keys)
    if plan.action_keys:
        frames[ACTION_KEY] = _vector(builder, episode, plan.action_keys)
    return frames

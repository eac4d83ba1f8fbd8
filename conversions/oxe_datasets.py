"""Per-dataset keys of the Open X-Embodiment datasets in DeFI's GIDM pretraining mixture
(docs/method.md §3.3).

One row per RLDS dataset: which raw step features hold the primary / wrist camera, the language
instruction, the action and the proprioceptive state, and the control frequency. Keys are relative
to ``steps/`` in the flattened RLDS record (``observation/image`` -> ``steps/observation/image``).
Action and state are the listed raw fields concatenated in order (no re-normalisation, no gripper
convention changes: GIDM pretraining uses frames + language only, so we keep the data as published).

Where the facts come from (read, not copied):
* dataset names and mixture: UniVLA ``prismatic/vla/datasets/rlds/oxe/mixtures.py``
  (``omni_magic_soup_plus_plus`` minus the navigation sets = docs/method.md §3.3);
* primary / wrist image keys: UniVLA (= OpenVLA) ``oxe/configs.py`` ``image_obs_keys``;
* raw language / action / state keys: the raw fields that UniVLA ``oxe/transforms.py`` reads per dataset
  (``observation/natural_language_instruction`` for the Google-converted sets, ``steps/language_instruction``
  for the sets "converted externally to RLDS", the int-coded ``observation/instruction`` of Language Table),
  cross-checked for fractal20220817_data against the TFDS catalog entry (tensorflow/datasets
  ``docs/catalog/fractal20220817_data.md``) and for bridge_dataset against real ``bridge_dataset`` debug
  shards (a slice of them is in ``tests/data/oxe_bridge_slice``);
* control frequency: the OXE dataset overview sheet as carried by LeRobot's former OpenX port
  (``lerobot/common/datasets/push_dataset_to_hub/openx/configs.yaml``, ``fps``); Ego4D: UniVLA's
  ``preprocess_ego4d.py`` keeps every 15th frame of 30 fps video (2 Hz).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OXEDatasetKeys:
    """Raw RLDS keys (relative to ``steps/``) and control frequency of one OXE dataset.

    language_encoding: ``text`` (a string feature) or ``utf8_codes`` (int tensor of UTF-8 bytes, 0-padded).
    """

    primary_image: str
    wrist_image: str | None
    language: str | None
    action: tuple[str, ...]
    state: tuple[str, ...]
    control_frequency_hz: float
    language_encoding: str = "text"


_NL = "observation/natural_language_instruction"  # language key of the Google-converted datasets
_LI = "language_instruction"  # language key of the datasets converted externally to RLDS
_EEF_DELTA_GRIPPER = ("action/world_vector", "action/rotation_delta", "action/gripper_closedness_action")
_ACTION = ("action",)
_STATE = ("observation/state",)

# fmt: off
OXE_DATASETS: dict[str, OXEDatasetKeys] = {
    # name                                                     primary image            wrist image                  language  action  state  Hz
    "fractal20220817_data": OXEDatasetKeys("observation/image", None, _NL, _EEF_DELTA_GRIPPER,
                                           ("observation/base_pose_tool_reached", "observation/gripper_closed"), 3),
    "kuka": OXEDatasetKeys("observation/image", None, _NL, _EEF_DELTA_GRIPPER,
                           ("observation/clip_function_input/base_pose_tool_reached", "observation/gripper_closed"), 10),
    "bridge": OXEDatasetKeys("observation/image", None, _NL,
                             ("action/world_vector", "action/rotation_delta", "action/open_gripper"), _STATE, 5),
    "bridge_dataset": OXEDatasetKeys("observation/image_0", None, _LI, _ACTION, _STATE, 5),
    "taco_play": OXEDatasetKeys("observation/rgb_static", "observation/rgb_gripper", _NL,
                                ("action/rel_actions_world",), ("observation/robot_obs",), 15),
    "jaco_play": OXEDatasetKeys("observation/image", "observation/image_wrist", _NL,
                                ("action/world_vector", "action/gripper_closedness_action"),
                                ("observation/end_effector_cartesian_pos",), 10),
    "berkeley_cable_routing": OXEDatasetKeys("observation/image", "observation/wrist45_image", _NL,
                                             ("action/world_vector", "action/rotation_delta"),
                                             ("observation/robot_state",), 10),
    "roboturk": OXEDatasetKeys("observation/front_rgb", None, _NL, _EEF_DELTA_GRIPPER, (), 10),
    "viola": OXEDatasetKeys("observation/agentview_rgb", "observation/eye_in_hand_rgb", _NL, _EEF_DELTA_GRIPPER,
                            ("observation/joint_states", "observation/gripper_states"), 20),
    "berkeley_autolab_ur5": OXEDatasetKeys("observation/image", "observation/hand_image", _NL, _EEF_DELTA_GRIPPER,
                                           ("observation/robot_state",), 5),
    "toto": OXEDatasetKeys("observation/image", None, _NL,
                           ("action/world_vector", "action/rotation_delta", "action/open_gripper"), _STATE, 30),
    "language_table": OXEDatasetKeys("observation/rgb", None, "observation/instruction", _ACTION,
                                     ("observation/effector_translation",), 10, language_encoding="utf8_codes"),
    "stanford_hydra_dataset_converted_externally_to_rlds": OXEDatasetKeys(
        "observation/image", "observation/wrist_image", _LI, _ACTION, _STATE, 10),
    "austin_buds_dataset_converted_externally_to_rlds": OXEDatasetKeys(
        "observation/image", "observation/wrist_image", _LI, _ACTION, _STATE, 20),
    "nyu_franka_play_dataset_converted_externally_to_rlds": OXEDatasetKeys(
        "observation/image", None, _LI, _ACTION, _STATE, 3),
    "furniture_bench_dataset_converted_externally_to_rlds": OXEDatasetKeys(
        "observation/image", "observation/wrist_image", _LI, _ACTION, _STATE, 10),
    "ucsd_kitchen_dataset_converted_externally_to_rlds": OXEDatasetKeys(
        "observation/image", None, _LI, _ACTION, _STATE, 2),
    "austin_sailor_dataset_converted_externally_to_rlds": OXEDatasetKeys(
        "observation/image", "observation/wrist_image", _LI, _ACTION, _STATE, 20),
    "austin_sirius_dataset_converted_externally_to_rlds": OXEDatasetKeys(
        "observation/image", "observation/wrist_image", _LI, _ACTION, _STATE, 20),
    "dlr_edan_shared_control_converted_externally_to_rlds": OXEDatasetKeys(
        "observation/image", None, _LI, _ACTION, _STATE, 5),
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": OXEDatasetKeys(
        "observation/image", "observation/wrist_image", _LI, _ACTION, _STATE, 20),
    "utaustin_mutex": OXEDatasetKeys("observation/image", "observation/wrist_image", _LI, _ACTION, _STATE, 20),
    "berkeley_fanuc_manipulation": OXEDatasetKeys("observation/image", "observation/wrist_image", _LI, _ACTION,
                                                  _STATE, 10),
    "cmu_stretch": OXEDatasetKeys("observation/image", None, _LI, _ACTION, _STATE, 10),
    "bc_z": OXEDatasetKeys("observation/image", None, _NL,
                           ("action/future/xyz_residual", "action/future/axis_angle_residual",
                            "action/future/target_close"),
                           ("observation/present/xyz", "observation/present/axis_angle",
                            "observation/present/sensed_close"), 10),
    "fmb": OXEDatasetKeys("observation/image_side_1", "observation/image_wrist_1", _LI, _ACTION,
                          ("observation/eef_pose", "observation/state_gripper_pose"), 10),
    "dobbe": OXEDatasetKeys("observation/wrist_image", None, _LI, _ACTION, _STATE, 3.75),
    **{f"ego4d_split_{i}": OXEDatasetKeys("observation/image", None, _LI, _ACTION, _STATE, 2) for i in range(1, 5)},
}
# fmt: on

# Other names under which the same builders are published or referred to (docs/method.md §3.3 short names,
# OpenVLA/UniVLA config names).
OXE_DATASET_ALIASES: dict[str, str] = {
    "bridge_oxe": "bridge",
    "bridge_orig": "bridge_dataset",
    "rt_1": "fractal20220817_data",
    "fractal": "fractal20220817_data",
    **{
        short: f"{short}_converted_externally_to_rlds"
        for short in (
            "austin_sailor_dataset",
            "austin_sirius_dataset",
            "austin_buds_dataset",
            "stanford_hydra_dataset",
            "nyu_franka_play_dataset",
            "furniture_bench_dataset",
            "ucsd_kitchen_dataset",
            "dlr_edan_shared_control",
            "iamlab_cmu_pickup_insert",
        )
    },
    **{
        short: f"{short}_dataset_converted_externally_to_rlds"
        for short in (
            "stanford_hydra",
            "austin_buds",
            "nyu_franka_play",
            "furniture_bench",
            "ucsd_kitchen",
            "austin_sailor",
            "austin_sirius",
        )
    },
}

# The GIDM pretraining mixture as docs/method.md §3.3 names it, with its sampling weights (before they are
# multiplied by each dataset's number of transitions). Every name resolves to a row through ``canonical_name``.
GIDM_MIXTURE_WEIGHTS: dict[str, float] = {
    "fractal20220817_data": 0.5, "kuka": 0.1, "bridge_dataset": 1.0, "taco_play": 2.0, "jaco_play": 1.0,
    "berkeley_cable_routing": 1.0, "roboturk": 2.0, "viola": 2.0, "berkeley_autolab_ur5": 2.0, "toto": 1.0,
    "language_table": 0.1, "stanford_hydra": 2.0, "austin_buds": 1.0, "nyu_franka_play": 3.0,
    "furniture_bench": 0.1, "ucsd_kitchen": 2.0, "austin_sailor": 1.0, "austin_sirius": 1.0,
    "dlr_edan_shared_control": 1.0, "iamlab_cmu_pickup_insert": 1.0, "utaustin_mutex": 1.0,
    "berkeley_fanuc_manipulation": 2.0, "cmu_stretch": 1.0, "bc_z": 0.2, "fmb": 1.0, "dobbe": 0.2,
    **{f"ego4d_split_{i}": 1.0 for i in range(1, 5)},
}  # fmt: skip


class UnknownOXEDatasetError(KeyError):
    """A dataset name that has no row in ``OXE_DATASETS``."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0])


def canonical_name(name: str) -> str:
    """Resolve an alias (``bridge_oxe``, ``austin_buds``, ...) to the row name in ``OXE_DATASETS``."""
    return OXE_DATASET_ALIASES.get(name, name)


def lookup(name: str) -> OXEDatasetKeys:
    """The table row for ``name`` (aliases accepted); ``UnknownOXEDatasetError`` lists the known names."""
    row = OXE_DATASETS.get(canonical_name(name))
    if row is None:
        raise UnknownOXEDatasetError(
            f"unknown OXE dataset {name!r}: no row in lerobot_defi.conversions.oxe_datasets.OXE_DATASETS. "
            f"Known: {', '.join(sorted(OXE_DATASETS))}. If the builder directory was renamed, pass the real name "
            "with --dataset-name; for another dataset add a row to the table."
        )
    return row

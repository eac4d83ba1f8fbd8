"""The options of ``lerobot-defi-eval-calvin`` (``CalvinBenchmarkConfig``) and the settings among them that determine
the results (``PROTOCOL_KEYS``: a resumed run must use the same ones). Read by the benchmark
(``calvin_benchmark``) and by the processes that play the sequences (``calvin_sequence_runner``)."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from lerobot.configs import PreTrainedConfig, parser

from lerobot_defi.envs.calvin_sequences import STANDARD_SEQUENCES_FILE, SUBTASKS_PER_SEQUENCE
from lerobot_defi.envs.calvin_simulator import DEFAULT_SCENE
from lerobot_defi.envs.configuration_calvin import CalvinEnvConfig

# Settings that change the numbers: a resumed run must use the same ones.
PROTOCOL_KEYS = (
    "policy",
    "ep_len",
    "sequences_sha256",
    "scene",
    "dataset_dir",
    "renderer",
    "seed",
    "rename_map",
)


@dataclass
class CalvinBenchmarkConfig:
    """Options of ``lerobot-defi-eval-calvin``, in LeRobot's draccus style (``--num_sequences=1000``)."""

    # The policy: --policy.path=<folder or Hub id> (plus --policy.<field> overrides, e.g. --policy.device=cuda),
    # or --policy.type=<type> for random weights (smoke tests).
    policy: PreTrainedConfig | None = None
    num_sequences: int = 1000
    # Steps allowed per instruction: 360 is CALVIN's protocol, 720 what DeFI's evaluation code uses.
    ep_len: int = 360
    num_workers: int = 1
    output_dir: Path | None = None
    # Continue the run found in output_dir (sequences.jsonl) instead of refusing to overwrite it.
    resume: bool = False
    # Indices of the sequences to film (e.g. --video_sequences='[0,1,2]'), written to output_dir/videos.
    video_sequences: list[int] = field(default_factory=list)
    # JSON list of [initial_condition, [task, ...]]; default: the 1000 standard sequences.
    sequences_file: str | None = None
    # CALVIN validation split folder (simulator config + instructions); default: calvin_env's scene config.
    dataset_dir: str | None = None
    scene: str = DEFAULT_SCENE
    renderer: str = "auto"
    # "package.module:function" building (simulator, oracle) instead of calvin_env (see calvin_simulator.py).
    simulator_factory: str | None = None
    # Env key -> policy key, as lerobot-eval's --rename_map.
    rename_map: dict[str, str] = field(default_factory=dict)
    # Torch/numpy seed before sequence i is seed + i, so the policy's random draws do not depend on the worker.
    # The simulator's state does: calvin_env's reset keeps the last gripper command (robot_obs[14]), so a
    # sequence starts from what the sequence before it in its worker left. One worker plays them in order, as
    # CALVIN's own loop does; N workers give each sequence another predecessor.
    seed: int = 0

    def __post_init__(self):
        policy_path = parser.get_path_arg("policy")
        if policy_path:
            overrides = parser.get_yaml_overrides("policy") + (parser.get_cli_overrides("policy") or [])
            self.policy = PreTrainedConfig.from_pretrained(policy_path, cli_overrides=overrides)
            self.policy.pretrained_path = Path(policy_path)
        if self.num_sequences < 1:
            raise ValueError(f"--num_sequences must be >= 1, got {self.num_sequences}")
        if self.ep_len < 1:
            raise ValueError(f"--ep_len must be >= 1, got {self.ep_len}")
        if self.num_workers < 1:
            raise ValueError(f"--num_workers must be >= 1, got {self.num_workers}")

    @classmethod
    def __get_path_fields__(cls) -> list[str]:
        return ["policy"]

    def env_config(self) -> CalvinEnvConfig:
        return CalvinEnvConfig(
            episode_length=self.ep_len,
            subtasks_per_episode=SUBTASKS_PER_SEQUENCE,
            sequences_file=self.sequences_file,
            dataset_dir=self.dataset_dir,
            scene=self.scene,
            renderer=self.renderer,
            simulator_factory=self.simulator_factory,
        )

    def protocol(self) -> dict:
        """The settings that determine the results (compared on resume), JSON-ready."""
        sequences_path = Path(self.sequences_file) if self.sequences_file else STANDARD_SEQUENCES_FILE
        return {
            "policy": str(self.policy.pretrained_path or f"random {self.policy.type}"),
            "policy_type": self.policy.type,
            "ep_len": self.ep_len,
            "sequences_sha256": hashlib.sha256(sequences_path.read_bytes()).hexdigest(),
            "scene": self.scene,
            "dataset_dir": self.dataset_dir,
            "renderer": self.renderer,
            "seed": self.seed,
            "rename_map": dict(self.rename_map),
            "num_sequences": self.num_sequences,
        }

"""Building CALVIN's real simulator (``calvin_env``, PyBullet) and its task oracle.

``calvin_env`` is not on PyPI: it is an optional dependency installed from its public repository
(see ``CALVIN_ENV_INSTALL_HINT``). Nothing here imports it before a simulator is built, so the
rest of the package (configs, tests with a stand-in simulator) works without it.

The simulator is anything with the interface of ``calvin_env.envs.play_table_env.PlayTableSimEnv``
(``reset(robot_obs, scene_obs) -> obs``, ``step(action) -> (obs, reward, done, info)``,
``get_obs()``, ``get_info()``, ``close()``), the oracle anything with the interface of
``calvin_env.envs.tasks.Tasks`` (``get_task_info_for_set(start_info, end_info, tasks) -> set``).
A different builder can be plugged in by a dotted path (``simulator_factory``); it is called with
the same keywords as ``build_calvin_simulator`` and returns ``(simulator, oracle)``.
"""

import ctypes.util
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

# The one command that checks the install (the README's): lerobot_defi/envs/check_calvin_install.py.
INSTALL_CHECK_COMMAND = "python -m lerobot_defi.envs.check_calvin_install"
CALVIN_ENV_INSTALL_HINT = f"""\
CALVIN's simulator `calvin_env` is not installed. It is not on PyPI; install it from its repository, cloned
OUTSIDE the project folder (a clone inside it shadows the installed package), with the venv's own pip:
    .venv/bin/pip install -e ".[calvin]"      # pybullet (compiles: needs a C++ compiler and Python headers), hydra-core, ...
    git clone https://github.com/mees/calvin_env.git ../calvin_env
    .venv/bin/pip install --no-deps -e ../calvin_env
    .venv/bin/{INSTALL_CHECK_COMMAND}     # the install check: builds the simulator once
Keep the clone a git repository (calvin_env reads its own commit hash at start-up).
See the README of lerobot_policy_defi ("Install the simulator") for details."""

RENDERERS = ("auto", "egl", "tiny")
DEFAULT_SCENE = "calvin_scene_D"
CAMERAS_CONFIG = "static_and_gripper"
EVALUATION_CAMERAS = ("static", "gripper")
TASKS_CONFIG = Path("tasks") / "new_playtable_tasks.yaml"
MERGED_CONFIG = Path(".hydra") / "merged_config.yaml"
MAX_PYBULLET_CLIENTS = 1024  # pybullet's MAX_PHYSICS_CLIENTS


class CalvinEnvNotInstalledError(ImportError):
    """``calvin_env`` (or one of its dependencies) is missing; the message says how to install it."""


class CalvinDatasetDirError(FileNotFoundError):
    """A ``dataset_dir`` that is not a CALVIN validation split folder; the message names the option."""


def print_if_uncaught(error: BaseException) -> BaseException:
    """``error``, arranged so that if nothing catches it (it reaches the top of a command such as ``lerobot-eval``,
    which lets exceptions through), Python prints ``error: <message>`` instead of a traceback. Callers that catch
    it see an ordinary exception."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if value is error:
            print(f"error: {value}", file=sys.stderr)
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook
    return error


def check_dataset_dir(dataset_dir: str | Path | None, option: str) -> None:
    """Raise ``CalvinDatasetDirError`` (naming ``option`` as the command spells it, e.g. ``--env.dataset_dir``)
    unless ``dataset_dir`` is None or a CALVIN split folder with the simulator config and the instructions."""
    from lerobot_defi.envs.calvin_instructions import EMBEDDINGS_FILE

    if dataset_dir is None:
        return
    path = Path(dataset_dir)
    expected = (
        f"a CALVIN validation split folder (e.g. task_ABC_D/validation) holding {MERGED_CONFIG} and "
        f"{EMBEDDINGS_FILE}"
    )
    if not path.is_dir():
        raise CalvinDatasetDirError(f"{option}={dataset_dir}: no such folder; expected {expected}")
    missing = [str(name) for name in (MERGED_CONFIG, EMBEDDINGS_FILE) if not (path / name).is_file()]
    if missing:
        raise CalvinDatasetDirError(f"{option}={dataset_dir} lacks {', '.join(missing)}; expected {expected}")


class CalvinSimulator(Protocol):
    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> dict: ...
    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]: ...
    def get_obs(self) -> dict: ...
    def get_info(self) -> dict: ...
    def close(self) -> None: ...


class TaskOracle(Protocol):
    def get_task_info_for_set(self, start_info: dict, end_info: dict, task_filter: set[str]) -> set[str]: ...


SimulatorFactory = Callable[..., tuple[CalvinSimulator, TaskOracle]]


def calvin_env_available() -> bool:
    """Whether ``calvin_env`` and the packages it needs can be imported (nothing is imported)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("calvin_env", "pybullet", "hydra"))
    except (ImportError, ValueError):  # a module blocked in sys.modules has no spec
        return False


def _namespace_error(locations: list[str]) -> CalvinEnvNotInstalledError:
    return CalvinEnvNotInstalledError(
        f"`import calvin_env` finds the folder {locations[0] if locations else '?'}, not the calvin_env package: "
        "a folder named calvin_env without __init__.py is on Python's import path (an empty namespace package). "
        "Usually it is a clone of calvin_env in the current directory, which Python searches first and which "
        "shadows the installed package. Clone calvin_env outside the project folder (e.g. ../calvin_env), install "
        "it with `.venv/bin/pip install --no-deps -e ../calvin_env`, and remove or move the inner clone."
    )


def require_calvin_env():
    """Import and return ``calvin_env``, or raise ``CalvinEnvNotInstalledError`` with the install hint (also when
    ``calvin_env`` resolves to an empty namespace package, e.g. a clone in the working directory)."""
    try:
        with warnings.catch_warnings():  # gym 0.26 and hydra warn about their own deprecations at import
            warnings.simplefilter("ignore")
            import calvin_env
            import calvin_env.envs.play_table_env
            import hydra  # noqa: F401
            import pybullet  # noqa: F401
    except ImportError as error:
        raise CalvinEnvNotInstalledError(f"{CALVIN_ENV_INSTALL_HINT}\n(import failed: {error})") from None
    if getattr(calvin_env, "__file__", None) is None:
        raise _namespace_error(list(getattr(calvin_env, "__path__", [])))
    return calvin_env


def calvin_env_package_dir() -> Path:
    """The folder of the ``calvin_env`` package that ``import calvin_env`` loads, found without importing it
    (``importlib.util.find_spec``); a namespace package (no ``__init__.py``) is refused with what to do."""
    try:
        spec = importlib.util.find_spec("calvin_env")
    except (ImportError, ValueError):  # ValueError: a module blocked in sys.modules has no spec
        spec = None
    if spec is None:
        raise CalvinEnvNotInstalledError(CALVIN_ENV_INSTALL_HINT)
    if spec.origin in (None, "namespace"):
        raise _namespace_error([str(p) for p in spec.submodule_search_locations or []])
    return Path(spec.origin).resolve().parent


def calvin_env_root() -> Path:
    """The calvin_env checkout (it holds ``conf/`` and ``data/`` next to the package)."""
    root = calvin_env_package_dir().parent
    if not (root / "conf").is_dir():
        raise FileNotFoundError(
            f"calvin_env is installed from {root}, which has no conf/ folder: install calvin_env editable "
            "from a clone of its repository (.venv/bin/pip install --no-deps -e ../calvin_env)"
        )
    return root


def use_egl_for(renderer: str) -> bool:
    """Whether ``renderer`` means PyBullet's EGL plugin (True) or its CPU TinyRenderer (False).

    ``auto`` picks EGL whenever an EGL library is present: on a GPU machine it renders on the GPU, on
    a CPU-only machine Mesa renders it in software (llvmpipe). CALVIN's data was rendered with EGL and
    TinyRenderer images differ visibly, so ``tiny`` is only the fallback when no EGL library exists.
    """
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    if renderer == "auto":
        if ctypes.util.find_library("EGL") is None:
            logger.warning("No EGL library found: rendering CALVIN with PyBullet's TinyRenderer on the CPU.")
            return False
        return True
    return renderer == "egl"


def _select_egl_device(cuda_device_index: int) -> None:
    """Point PyBullet's EGL plugin at the GPU of ``cuda_device_index`` (calvin_env's own lookup)."""
    if "EGL_VISIBLE_DEVICES" in os.environ:
        return
    try:
        from calvin_env.utils.utils import get_egl_device_id

        os.environ["EGL_VISIBLE_DEVICES"] = str(get_egl_device_id(cuda_device_index))
    except (
        Exception
    ) as error:  # calvin_env compiles a small EGL probe; any failure leaves EGL's default device
        logger.warning(
            f"Could not map CUDA device {cuda_device_index} to an EGL device ({error}); using EGL's default."
        )


def _check_no_other_pybullet_client() -> None:
    """PyBullet's EGL plugin renders for the first simulator of a process only; others silently get
    TinyRenderer images (checked: ~20/255 off). Refuse a second EGL simulator instead."""
    import pybullet

    if any(pybullet.isConnected(physicsClientId=client) for client in range(MAX_PYBULLET_CLIENTS)):
        raise RuntimeError(
            "Another PyBullet simulator is open in this process, and PyBullet's EGL renderer draws for one "
            "simulator per process only (a second one would silently render with TinyRenderer). Close the other "
            "simulator, or run one CALVIN env per process: lerobot-eval --eval.use_async_envs=true (its default) "
            "or lerobot-defi-eval-calvin --num_workers=N."
        )


def compose_env_config(scene: str = DEFAULT_SCENE, dataset_dir: str | Path | None = None):
    """The ``PlayTableSimEnv`` config (OmegaConf) for the evaluation.

    With ``dataset_dir`` (a CALVIN split folder), the config the dataset was recorded with
    (``.hydra/merged_config.yaml``), as CALVIN's evaluation does; otherwise calvin_env's own configs
    composed with the static and gripper cameras and ``scene`` — the same config as scene D's
    validation split for ``calvin_scene_D``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if dataset_dir is not None:
        path = Path(dataset_dir) / MERGED_CONFIG
        if not path.is_file():
            raise CalvinDatasetDirError(
                f"{path} not found: dataset_dir must be a CALVIN split folder (e.g. task_ABC_D/validation) "
                f"holding {MERGED_CONFIG}"
            )
        config = OmegaConf.load(path)
        if "env" not in config:
            raise KeyError(f"{path} has no 'env' entry (expected calvin_env's merged hydra config)")
        keep_evaluation_cameras(config, path)
        return config.env
    conf_dir = calvin_env_root() / "conf"
    if not (conf_dir / "scene" / f"{scene}.yaml").is_file():
        available = sorted(p.stem for p in (conf_dir / "scene").glob("*.yaml"))
        raise ValueError(f"unknown CALVIN scene {scene!r}; calvin_env has {available}")
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Defaults list is missing `_self_`.*")
        with initialize_config_dir(version_base=None, config_dir=str(conf_dir)):
            config = compose(
                "config_data_collection",
                overrides=[f"cameras={CAMERAS_CONFIG}", f"scene={scene}", "use_vr=false"],
            )
    return config.env


def keep_evaluation_cameras(config, source: Path) -> None:
    """Drop every camera but static and gripper from a merged CALVIN config, in place.

    The CALVIN release's configs also list the tactile sensor, which needs ``tacto`` (not installed
    with calvin_env) and is never observed in the evaluation; CALVIN's own ``get_env`` drops unused
    cameras the same way. The cameras sit at the top level (``env.cameras`` interpolates them) or,
    resolved, under ``env.cameras``; both are handled.
    """
    from omegaconf import OmegaConf

    nodes = [config]
    if not OmegaConf.is_interpolation(config.env, "cameras"):
        nodes.append(config.env)
    for node in nodes:
        cameras = node.get("cameras")
        if cameras is None:
            continue
        missing = [name for name in EVALUATION_CAMERAS if name not in cameras]
        if missing:
            raise KeyError(
                f"{source}: the CALVIN config has no {missing} camera(s) (cameras: {sorted(cameras)}); "
                f"the evaluation needs {list(EVALUATION_CAMERAS)}"
            )
        for name in [name for name in cameras if name not in EVALUATION_CAMERAS]:
            del cameras[name]


def build_task_oracle() -> TaskOracle:
    """CALVIN's task oracle over the 34 evaluation tasks (calvin_env's ``new_playtable_tasks``)."""
    import hydra
    from omegaconf import OmegaConf

    return hydra.utils.instantiate(OmegaConf.load(calvin_env_root() / "conf" / TASKS_CONFIG))


def build_calvin_simulator(
    *,
    scene: str = DEFAULT_SCENE,
    dataset_dir: str | Path | None = None,
    renderer: str = "auto",
    cuda_device_index: int | None = None,
    camera_size: int | None = None,
) -> tuple[CalvinSimulator, TaskOracle]:
    """A headless ``PlayTableSimEnv`` (static + gripper cameras, scene info on) and the task oracle.

    ``camera_size``: render both cameras at ``camera_size`` x ``camera_size`` pixels (CALVIN's camera poses and
    fields of view; fewer pixels render proportionally faster); None keeps 200x200 static and 84x84 gripper."""
    require_calvin_env()
    import hydra

    use_egl = use_egl_for(renderer)
    if use_egl:
        _check_no_other_pybullet_client()
        if cuda_device_index is not None:
            _select_egl_device(cuda_device_index)
    env_config = compose_env_config(scene, dataset_dir)
    if camera_size is not None:
        for camera in EVALUATION_CAMERAS:
            env_config.cameras[camera].width = camera_size
            env_config.cameras[camera].height = camera_size
    simulator = hydra.utils.instantiate(
        env_config, show_gui=False, use_vr=False, use_scene_info=True, use_egl=use_egl
    )
    if use_egl:
        simulator.get_obs()  # the first EGL frame after loading is rendered without shadows: discard it
    return simulator, build_task_oracle()


def reset_for_episode(simulator: CalvinSimulator, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict:
    """Reset to ``(robot_obs, scene_obs)`` with no trace of earlier episodes; returns the observation.

    calvin_env's ``reset`` restores the joints and the scene but keeps three things from the episode before: the
    blocks' velocities (it sets their poses only: a block still sliding from a push slides on), the gripper command
    (``robot_obs[14]``, restored only by the next step's action; here: open) and which inverse kinematics solver
    the last target used (``robot.mixed_ik.is_using_IK_fast``; here: PyBullet's, as after construction). Without
    this, an episode's trajectory depends on what the simulator played before (measured: up to 3e-4 in the robot
    state of a switch episode after a push episode). Stand-in simulators without these attributes are only reset.
    """
    for movable in getattr(getattr(simulator, "scene", None), "movable_objects", []):
        import pybullet

        pybullet.resetBaseVelocity(movable.uid, [0, 0, 0], [0, 0, 0], physicsClientId=simulator.cid)
    observation = simulator.reset(robot_obs=robot_obs, scene_obs=scene_obs)
    robot = getattr(simulator, "robot", None)
    if robot is None:
        return observation
    robot.gripper_action = 1
    if hasattr(getattr(robot, "mixed_ik", None), "is_using_IK_fast"):
        robot.mixed_ik.is_using_IK_fast = False
    return simulator.get_obs()


def load_simulator_factory(path: str | None) -> SimulatorFactory:
    """``build_calvin_simulator``, or the callable named by ``"package.module:function"``."""
    if not path:
        return build_calvin_simulator
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"simulator_factory must look like 'package.module:function', got {path!r}")
    factory: Any = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(factory):
        raise ValueError(f"simulator_factory {path!r}: {module_name} has no callable {attribute!r}")
    return factory


def check_installation(renderer: str = "auto") -> str:
    """Build and reset the simulator once, as the evaluation does; return one line saying what was used (the
    work of the install check, ``INSTALL_CHECK_COMMAND``)."""
    root = calvin_env_root()
    simulator, oracle = build_calvin_simulator(renderer=renderer)
    try:
        observation = simulator.reset()
        cameras = {name: tuple(image.shape) for name, image in observation["rgb_obs"].items()}
        info = simulator.get_info()
        oracle.get_task_info_for_set(info, info, {"open_drawer"})  # the task oracle reads the scene
    finally:
        simulator.close()
        if getattr(simulator, "cid", None) is not None:
            simulator.cid = -1  # calvin_env's __del__ would disconnect a second time
    drawn_by = "EGL" if use_egl_for(renderer) else "TinyRenderer"
    return (
        f"calvin_env works: {root} (package {calvin_env_package_dir()}); simulator and task oracle built, "
        f"rendered with {drawn_by}, cameras {cameras}"
    )

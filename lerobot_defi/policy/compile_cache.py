"""Compiled inference that starts in seconds in a new process: ``torch.compile`` artefacts kept on disk.

A robot restarts its policy often, and every new process compiles the policy's chunk function again (minutes
for the official policy). :class:`CompileCache` keeps what compilation produced in a folder that outlives the
process (``DeFIConfig.compile_cache_dir``):

* ``artifacts/<key>.torchcache``, one entry per policy and input signature: PyTorch's portable compile
  artefacts (``torch.compiler.save_cache_artifacts``: inductor's compiled graphs, AOTAutograd entries, Triton
  kernels and autotuning results), loaded with ``torch.compiler.load_cache_artifacts`` before the first call.
  The entry can be copied to another machine of the same kind.
* ``inductor/``: inductor's own cache folder (``TORCHINDUCTOR_CACHE_DIR``) unless the user set one, so the
  compiled kernels themselves (C++ libraries on the CPU, Triton binaries on CUDA) survive a reboot or a fresh
  container, which empty inductor's default folder in ``/tmp``.

The key is the SHA-256 of :func:`key_material`: the policy's config as saved, a digest of its weights, the
code version (this package's sources, diffusers and transformers versions), the torch / Triton / Python
versions, the device type and name, the input shapes, dtypes and autocast state, the compile mode and the
matrix-product precision settings (TF32) inductor keys its own graphs by.

Dynamo still traces the Python code in each new process, and the compiled kernels are loaded again: that is
what a warm start costs (see ``benchmarks/bench_compiled_start.py``). A missing, corrupt or mismatched entry
is never an error: it is ignored with one warning line and the function is compiled (and the entry rewritten).
"""

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

ENTRY_MAGIC = b"lerobot_defi compile cache entry v1\n"
ENTRY_SUFFIX = ".torchcache"
DISABLED_SETTINGS = ("", "off", "none", "null", "false")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # lerobot_defi/
# Config fields that do not change the compiled code (where the policy came from or goes to).
CONFIG_FIELDS_NOT_IN_KEY = (
    "compile_cache_dir",
    "device",
    "pretrained_path",
    "pretrained_revision",
    "push_to_hub",
    "repo_id",
    "private",
    "tags",
    "license",
)


def default_compile_cache_dir() -> Path:
    """``$HF_LEROBOT_HOME/defi_compile_cache`` (``~/.cache/huggingface/lerobot/defi_compile_cache``)."""
    from lerobot.utils.constants import HF_LEROBOT_HOME

    return Path(HF_LEROBOT_HOME) / "defi_compile_cache"


def resolve_compile_cache_dir(setting: str | Path | None) -> Path | None:
    """The cache folder for a ``compile_cache_dir`` setting: ``"auto"`` -> :func:`default_compile_cache_dir`,
    ``None`` / ``"off"`` -> ``None`` (no cache), anything else -> that folder (``~`` expanded)."""
    if setting is None or str(setting).strip().lower() in DISABLED_SETTINGS:
        return None
    if str(setting).strip().lower() == "auto":
        return default_compile_cache_dir()
    return Path(setting).expanduser()


# --- what the key is made of -----------------------------------------------------------------------------------
def config_as_saved(config) -> str:
    """The policy config as ``config.json`` holds it (draccus encoding), minus fields that do not change the
    compiled code; canonical JSON."""
    import draccus

    encoded = draccus.encode(config)
    kept = {k: v for k, v in encoded.items() if k not in CONFIG_FIELDS_NOT_IN_KEY}
    return json.dumps(kept, sort_keys=True, default=str)


_POSITION_MULTIPLIER = 0x9E3779B97F4A7C15 - (1 << 64)  # odd, as a signed int64
_DIGEST_CHUNK = 1 << 22  # elements per step: bounds the int64 temporaries to about 100 MB


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over every tensor of ``module.state_dict()``: names, dtypes, shapes and a checksum of the bits.

    The checksum runs where the tensors are (no copy of a GPU's weights to the host): the tensor's bits as
    integers ``w_i``, summed plain and weighted by position, ``sum w_i`` and ``sum w_i * (i * K + 1)`` in int64
    arithmetic (exact modulo 2**64, so independent of the reduction order). Any single changed element, and any
    two changed elements, change it.
    """
    integer_view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    names, sums = [], []
    for name, tensor in sorted(module.state_dict().items()):
        if tensor.is_meta:
            raise ValueError(f"weights_digest: {name} is on the meta device (the weights are not loaded yet)")
        flat = tensor.detach().reshape(-1)
        if flat.dtype == torch.bool:
            flat = flat.to(torch.uint8)
        bits = flat.view(integer_view[flat.element_size()])
        total = torch.zeros(2, dtype=torch.int64, device=bits.device)
        for start in range(0, bits.numel(), _DIGEST_CHUNK):
            words = bits[start : start + _DIGEST_CHUNK].to(torch.int64)
            positions = torch.arange(start, start + words.numel(), device=words.device, dtype=torch.int64)
            total += torch.stack([words.sum(), (words * (positions * _POSITION_MULTIPLIER + 1)).sum()])
        sums.append(total)
        names.append(f"{name}:{str(tensor.dtype).removeprefix('torch.')}:{tuple(tensor.shape)}")
    digest = hashlib.sha256("\n".join(names).encode())
    devices = {s.device for s in sums}
    for device in sorted(devices, key=str):  # one copy to the host per device
        digest.update(torch.stack([s for s in sums if s.device == device]).cpu().numpy().tobytes())
    return digest.hexdigest()


def code_version() -> dict[str, str]:
    """This package's version and a hash of the sources that are traced into the graph (``models/`` and
    ``policy/``: edits in an editable install count), and the versions of diffusers and transformers, whose
    modules are traced too."""
    sources = hashlib.sha256()
    for path in sorted([*(PACKAGE_DIR / "models").rglob("*.py"), *(PACKAGE_DIR / "policy").rglob("*.py")]):
        sources.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes())
    version = {"lerobot_defi_sources": sources.hexdigest()}
    for package in ("lerobot_policy_defi", "diffusers", "transformers"):
        try:
            version[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version[package] = "not installed"
    return version


def toolchain_version() -> dict[str, str]:
    """torch (and its CUDA), Triton and Python versions: the compiled artefacts are only valid for these."""
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = "not installed"
    return {
        "torch": torch.__version__,
        "torch_cuda": str(torch.version.cuda),
        "triton": triton,
        "python": platform.python_version(),
    }


def device_description(device: torch.device) -> dict[str, str]:
    """Device type and name: the GPU's name and compute capability, or the CPU's model and vector ISA (the
    compiled C++ kernels use the host's instructions)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return {"type": "cuda", "name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}"}
    if device.type == "cpu":
        return {
            "type": "cpu",
            "name": _cpu_model_name(),
            "machine": platform.machine(),
            "isa": torch.backends.cpu.get_cpu_capability(),
        }
    return {"type": device.type}


def _cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def input_signature(inputs: tuple[Tensor, ...]) -> tuple:
    """Shapes, dtypes and devices of the inputs, grad mode and the autocast state of their device type (what
    makes torch.compile trace another graph)."""
    device_type = inputs[0].device.type if inputs and torch.is_tensor(inputs[0]) else "cpu"
    return (
        tuple(
            (tuple(t.shape), str(t.dtype), str(t.device))
            if torch.is_tensor(t)
            else (type(t).__name__, repr(t))
            for t in inputs
        ),
        torch.is_grad_enabled(),
        torch.is_autocast_enabled(device_type),
        str(torch.get_autocast_dtype(device_type)),
    )


def matmul_settings() -> list[str]:
    """The process-wide matrix-product settings that inductor's own graph cache keys its compiled graphs by
    (``torch.backends.cuda.matmul``: fp32 precision, e.g. ``tf32`` after ``allow_tf32 = True`` as lerobot-train
    and lerobot-eval set it, and the reduced-precision reductions): an entry made under other settings would load
    and then compile everything again."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)  # older torch has allow_tf32 alone
    return [
        str(matmul.allow_tf32 if precision is None else precision),
        str(matmul.allow_fp16_reduced_precision_reduction),
        str(matmul.allow_bf16_reduced_precision_reduction),
    ]


def key_material(model: nn.Module, description: dict, mode: str, inputs: tuple[Tensor, ...]) -> dict:
    """Everything the key is made of (stored in the entry's header, readable with ``head -c 4000``)."""
    device = next((t.device for t in inputs if torch.is_tensor(t)), torch.device("cpu"))
    inputs_, grad, autocast, autocast_dtype = input_signature(inputs)
    return {
        "model": description,
        "weights_sha256": weights_digest(model),
        "code": code_version(),
        "toolchain": toolchain_version(),
        "device": device_description(device),
        "inputs": [list(map(str, t)) for t in inputs_],
        "grad_enabled": grad,
        "autocast": [autocast, autocast_dtype],
        "compile_mode": mode,
        "matmul_settings": matmul_settings(),
    }


def key_of(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


# --- the folder -----------------------------------------------------------------------------------------------
class CompileCache:
    """A folder of compile cache entries (``artifacts/<key>.torchcache``) and inductor's cache (``inductor/``).

    Entry file: :data:`ENTRY_MAGIC`, one JSON header line (key, key material, payload size and SHA-256), then the
    bytes of ``torch.compiler.save_cache_artifacts()``. Written to a temporary file and renamed, so a reader
    sees a whole entry or none.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.artifacts_dir = self.root / "artifacts"
        self.inductor_dir = self.root / "inductor"

    def __repr__(self) -> str:
        return f"CompileCache({str(self.root)!r})"

    def entry_path(self, key: str) -> Path:
        return self.artifacts_dir / f"{key}{ENTRY_SUFFIX}"

    def use_for_inductor(self) -> None:
        """Point inductor's cache folder here unless the user chose one (``TORCHINDUCTOR_CACHE_DIR``).
        Process-wide; call it before the first compilation."""
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if current is None or current == default_cache_dir():  # inductor itself sets the default on first use
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.inductor_dir)

    def load(self, key: str, material: dict) -> bool:
        """Load the entry for ``key`` into torch's compile caches; ``False`` when there is none or it is
        unusable (then one warning line says why)."""
        path = self.entry_path(key)
        if not path.is_file():
            return False
        try:
            payload = self._read_entry(path, key, material)
            torch.compiler.load_cache_artifacts(payload)
        except Exception as error:  # a cache must never stop the policy: compile instead
            logger.warning(
                "Ignoring the compile cache entry %s (%s); compiling anew and rewriting it.",
                path,
                " ".join(str(error).split()) or type(error).__name__,
            )
            return False
        logger.info("Compile cache: loaded %s (%.1f MB)", path, len(payload) / 1e6)
        return True

    @staticmethod
    def _read_entry(path: Path, key: str, material: dict) -> bytes:
        data = path.read_bytes()
        if not data.startswith(ENTRY_MAGIC):
            raise ValueError("not a compile cache entry: wrong first line")
        header_end = data.find(b"\n", len(ENTRY_MAGIC))
        if header_end < 0:
            raise ValueError("the header line is cut off")
        try:
            header = json.loads(data[len(ENTRY_MAGIC) : header_end])
        except json.JSONDecodeError as error:
            raise ValueError(f"unreadable header: {error}") from error
        if header.get("key") != key or header.get("material") != material:
            raise ValueError(f"it was written for another key ({str(header.get('key'))[:12]}...)")
        payload = data[header_end + 1 :]
        if len(payload) != header.get("payload_bytes") or hashlib.sha256(payload).hexdigest() != header.get(
            "payload_sha256"
        ):
            raise ValueError(
                f"the artefacts are damaged: {len(payload)} bytes, the header says {header.get('payload_bytes')}"
                " with another checksum"
            )
        return payload

    def save(self, key: str, material: dict) -> Path | None:
        """Write every compile artefact of this process as the entry for ``key``; returns the path, ``None``
        when there was nothing to save or writing failed (one warning line)."""
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            logger.warning(
                "Compile cache: torch recorded no compile artefacts (are inductor's caches disabled, e.g. "
                "TORCHINDUCTOR_FORCE_DISABLE_CACHES?); nothing saved in %s",
                self.artifacts_dir,
            )
            return None
        payload, info = saved
        header = {
            "key": key,
            "material": material,
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "artifacts": {kind: len(entries) for kind, entries in info.artifacts.items()},
        }
        path = self.entry_path(key)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as f:
                f.write(ENTRY_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)
            os.replace(temporary, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            logger.warning(
                "Compile cache: could not write %s (%s); the next start compiles again.", path, error
            )
            return None
        logger.info("Compile cache: saved %s (%.1f MB)", path, len(payload) / 1e6)
        return path


def compile_cache_misses() -> int:
    """Graphs inductor / AOTAutograd compiled from scratch so far in this process (their caches' misses)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["fxgraph_cache_miss"] + counters["aot_autograd"]["autograd_cache_miss"]


@dataclass
class CacheEntryStatus:
    """What the first call with one input signature did: ``loaded`` the entry, compiled ``misses`` graphs from
    scratch, ``saved`` the entry; ``seconds``: host seconds of its steps (``key``: the key, weights digest
    included; ``load``: reading the entry into torch's caches; ``call``: the compiled function's first call, i.e.
    dynamo tracing, compiling or loading the compiled graphs, and launching; ``save``: writing the entry)."""

    key: str
    path: Path
    loaded: bool
    misses: int
    saved: bool
    seconds: dict[str, float] = field(default_factory=dict)


class CachedCompiledFunction:
    """``CachedCompiledFunction(torch.compile(fn), cache, model, description, mode)(*tensors)`` ==
    ``fn(*tensors)``; compile artefacts come from and go to ``cache``.

    At the first call with a new input signature (:func:`input_signature`): the key is computed (the weights
    are read then, so a policy loaded after ``compile_modules`` is keyed by its loaded weights), the entry is
    loaded if present, the compiled function runs (compiling, from the loaded artefacts when they fit), and the
    entry is saved when there was none or the function still had to compile something. Later calls go straight
    to the compiled function. ``model`` is the module whose weights the function reads; ``description`` names
    the model (the policy's config as saved). Creating one points inductor's cache folder into ``cache``
    (:meth:`CompileCache.use_for_inductor`).
    """

    def __init__(
        self, fn: Callable[..., Tensor], cache: CompileCache, model: nn.Module, description: dict, mode: str
    ):
        self.fn = fn
        self.cache = cache
        self.model = model
        self.description = description
        self.mode = mode
        self.entries: dict[tuple, CacheEntryStatus] = {}
        cache.use_for_inductor()

    def key_for(self, inputs: tuple[Tensor, ...]) -> tuple[str, dict]:
        material = key_material(self.model, self.description, self.mode, inputs)
        return key_of(material), material

    def __call__(self, *inputs: Tensor) -> Tensor:
        signature = input_signature(inputs)
        if signature in self.entries:
            return self.fn(*inputs)
        stamps = [time.perf_counter()]
        try:
            key, material = self.key_for(inputs)
        except Exception as error:  # never stop the policy for its cache
            logger.warning("Compile cache disabled for this input: could not compute its key (%s)", error)
            self.entries[signature] = CacheEntryStatus("", Path(), loaded=False, misses=0, saved=False)
            return self.fn(*inputs)
        stamps.append(time.perf_counter())
        loaded = self.cache.load(key, material)
        stamps.append(time.perf_counter())
        misses_before = compile_cache_misses()
        output = self.fn(*inputs)
        misses = compile_cache_misses() - misses_before
        stamps.append(time.perf_counter())
        saved = False
        if not loaded or misses:
            try:
                saved = self.cache.save(key, material) is not None
            except Exception as error:
                logger.warning("Compile cache: could not save the artefacts (%s)", error)
        stamps.append(time.perf_counter())
        seconds = {
            step: end - start for step, start, end in zip(("key", "load", "call", "save"), stamps, stamps[1:])
        }
        self.entries[signature] = CacheEntryStatus(
            key, self.cache.entry_path(key), loaded, misses, saved, seconds
        )
        logger.info(
            "Compile cache entry %s: %s, %d graph(s) compiled, %s; seconds: %s",
            key[:12],
            "loaded" if loaded else "not found",
            misses,
            "saved" if saved else "not saved",
            ", ".join(f"{step} {value:.2f}" for step, value in seconds.items()),
        )
        return output


def cached_compiled_function(
    fn: Callable[..., Tensor], cache_dir: str | Path | None, model: nn.Module, description: dict, mode: str
) -> Callable[..., Tensor]:
    """``fn`` wrapped in a :class:`CachedCompiledFunction` for the ``compile_cache_dir`` setting ``cache_dir``,
    or ``fn`` itself when the setting disables the cache."""
    root = resolve_compile_cache_dir(cache_dir)
    if root is None:
        return fn
    return CachedCompiledFunction(fn, CompileCache(root), model, description, mode)

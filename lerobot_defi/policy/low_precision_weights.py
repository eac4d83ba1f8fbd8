"""Low-precision copies of the weights that autocast casts, kept for inference (docs/performance.md §2).

The trainable parts of the policy keep fp32 weights for training. At inference with ``dtype`` bfloat16 / float16
they run under ``torch.autocast``, which casts the fp32 weight and bias of every matrix product to the autocast
dtype at every call: once per weight and chunk in eager mode (autocast caches a cast for as long as its context
lasts), and as one cast kernel per weight at every call of the compiled chunk and at every replay of its CUDA
graph. :class:`LowPrecisionWeights` keeps those casts instead: one copy per weight in the autocast dtype, made once
per device (fixed addresses, so a captured CUDA graph stays valid), refreshed in place only when the fp32 weights
changed, and put in the modules' place of the fp32 weights while the inference function runs (:meth:`run`: plain
assignments that ``torch.compile`` traces, so the compiled chunk reads the copies as its inputs).

Which weights: those autocast would cast to that dtype anyway, so every number is unchanged: the weight and bias of
each ``nn.Linear`` (``linear`` / ``addmm`` / ``mm`` are on autocast's lower-precision list on the CPU and on CUDA,
and autocast casts every floating-point argument but float64). They stay fp32: LayerNorm weights (autocast does not
cast them; CUDA's autocast runs ``layer_norm`` in fp32), parameters added to activations or looked up (frame
embeddings, queries, the VQ codebook, which its fp32 distances read too), a weight tied to another name, and the
frozen parts. ``tests/test_low_precision_weights.py`` checks the choice against what autocast does.

When the fp32 weights changed: :meth:`LowPrecisionWeights.refresh` compares the weights' version counters (every
in-place write bumps them: optimizer steps with the for-loop or foreach kernels, ``load_state_dict``, ``p.mul_()``
under ``no_grad``) and the number of optimizer steps taken in the process (torch's fused optimizer kernels leave the
version counters alone; a process-wide ``register_optimizer_step_post_hook`` counts the steps, from the first copy
on), and a parameter replaced by another tensor makes the copies anew. A host-side check of a few hundred objects per
call (about 30 µs for the official policy's 368 weights on a slow CPU), no device work unless something changed.
Writes through ``p.data`` bypass the version counters: call :meth:`LowPrecisionWeights.mark_changed` after them.
"""

from collections import Counter
from collections.abc import Callable, Iterable
from operator import attrgetter, is_

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

_version = attrgetter("_version")
# Optimizer steps taken in this process since the first copy was made (see the module docstring).
_optimizer_steps = 0
_optimizer_hook = None


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def _count_optimizer_steps() -> None:
    global _optimizer_hook
    if _optimizer_hook is None:
        _optimizer_hook = register_optimizer_step_post_hook(_count_optimizer_step)


def autocast_cast_parameters(root: nn.Module, parts: Iterable[str], dtype: torch.dtype) -> list[str]:
    """Names (in ``root``) of the parameters of the submodules ``parts`` that autocast to ``dtype`` casts wherever
    they are used: weight and bias of every ``nn.Linear`` that runs ``nn.Linear.forward``, when floating point,
    neither float64 (which autocast leaves alone) nor already ``dtype``, and reachable under one name only (a tied
    weight may be read by another op)."""
    names_per_tensor = Counter(id(p) for _, p in root.named_parameters(remove_duplicate=False))
    names = []
    for part in parts:
        for prefix, module in root.get_submodule(part).named_modules(prefix=part):
            if not isinstance(module, nn.Linear) or type(module).forward is not nn.Linear.forward:
                continue
            for name, parameter in module.named_parameters(recurse=False):
                if (
                    parameter.is_floating_point()
                    and parameter.dtype not in (torch.float64, dtype)
                    and not parameter.is_meta
                    and names_per_tensor[id(parameter)] == 1
                ):
                    names.append(f"{prefix}.{name}")
    return names


class LowPrecisionWeights:
    """Copies in ``dtype`` of the parameters :func:`autocast_cast_parameters` picks in ``root``'s ``parts``.

    ``refresh(root)`` makes them (first call, or after :meth:`drop`) or updates them in place when the fp32
    weights changed; ``run(fn, *args)`` calls ``fn`` with the copies in the modules' place of those weights.
    :meth:`drop` forgets them: call it when the parameters are moved or replaced (``.to()``, ``load_state_dict``),
    together with any CUDA graph that read the copies.
    """

    def __init__(self, parts: Iterable[str], dtype: torch.dtype):
        self.parts = tuple(parts)
        self.dtype = dtype
        self.names: list[str] = []
        self._slots: list[tuple[dict, str]] = []  # (the module's ``_parameters``, parameter name) per weight
        self._masters: list[Tensor] = []  # the fp32 parameters
        self._copies: list[Tensor] = []  # their copies in ``dtype``, same order
        self._seen: tuple | None = None  # (optimizer steps, version counters) at the last copy
        self.ready = False  # the copies are made (and :meth:`run` uses them)

    def __len__(self) -> int:
        return len(self._copies)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._copies)

    def drop(self) -> None:
        """Forget the copies (and which parameters they copy); the next :meth:`refresh` makes them again."""
        self.names, self._slots, self._masters, self._copies = [], [], [], []
        self._seen = None
        self.ready = False

    def mark_changed(self) -> None:
        """The next :meth:`refresh` copies every weight again, into the same tensors (for writes the version
        counters do not see, e.g. through ``p.data``)."""
        self._seen = None

    def refresh(self, root: nn.Module) -> bool:
        """Make the copies, or copy the fp32 weights into them when they changed. ``True`` when the copies were
        made anew (first call, after :meth:`drop`, or when a module's parameter was replaced by another tensor):
        a CUDA graph that read the previous copies must be dropped. Updates in place return ``False``."""
        current = [parameters.get(name) for parameters, name in self._slots]
        made = not self.ready or not all(map(is_, current, self._masters))
        if made:
            self._make(root)
            current = self._masters
        seen = (_optimizer_steps, tuple(map(_version, current)))
        if seen != self._seen:
            with torch.no_grad():
                for copy, master in zip(self._copies, self._masters, strict=True):
                    copy.copy_(master)
            self._seen = seen
        return made

    def _make(self, root: nn.Module) -> None:
        _count_optimizer_steps()
        self.names = autocast_cast_parameters(root, self.parts, self.dtype)
        self._slots = []
        for name in self.names:
            module_name, _, attribute = name.rpartition(".")
            self._slots.append((root.get_submodule(module_name)._parameters, attribute))
        self._masters = [parameters[name] for parameters, name in self._slots]
        # Plain tensors even when the first call comes under torch.inference_mode (lerobot-eval's rollout): an
        # inference tensor could not be updated in place by a later refresh outside it.
        with torch.inference_mode(False):
            self._copies = [torch.empty_like(m, dtype=self.dtype, requires_grad=False) for m in self._masters]
        self._seen = None
        self.ready = True

    def run(self, fn: Callable[..., Tensor], *args) -> Tensor:
        """``fn(*args)`` with each copied parameter replaced by its copy in its module (what was there is put
        back afterwards, also when ``fn`` raises). Call :meth:`refresh` first."""
        previous = [parameters[name] for parameters, name in self._slots]
        for (parameters, name), copy in zip(self._slots, self._copies, strict=True):
            parameters[name] = copy
        try:
            return fn(*args)
        finally:
            for (parameters, name), value in zip(self._slots, previous, strict=True):
                parameters[name] = value

"""Forward hooks on named modules, for the length of a ``with`` block.

Every place that looks inside a forward pass (the activation pass, layer probing, influence,
receptive fields) goes through :func:`capture`: it resolves module names (an unknown one is an
error naming it), keeps what each module outputs, can hand the rest of the network an edited
output, can end the forward pass early, and always removes its hooks, exceptions included::

    with capture(model, ["block1", "block2"]) as outputs:
        logits = model(x)
    outputs["block1"]  # (B, C, H, W), still in the autograd graph

This module never imports dagster.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import nn

#: ``keep(name, output)`` returns what to store for ``name``; the output itself by default.
Keep = Callable[[str, Any], Any]
#: ``edit(name, output)`` returns the output the rest of the network sees, or None to leave it.
Edit = Callable[[str, Any], Any]


class Captured(dict[str, Any]):
    """What the hooked modules produced: name -> kept value, in order of first completion.

    A module that runs several times in one pass (a shared module) keeps its last value;
    :attr:`calls` counts its runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def clear(self) -> None:
        """Forget the kept values and the call counts (e.g. between batches)."""
        super().clear()
        self.calls.clear()


class _StopForward(Exception):
    """Raised by the ``stop_after`` hook to end the forward pass; :func:`capture` swallows it."""


def find_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The submodules called ``names`` (``model.named_modules()`` names), in that order.

    Raises
    ------
    ValueError
        Naming every unknown name, with close matches and the first valid names. The model
        itself (the empty name) is not a layer.
    """
    modules = {name: module for name, module in model.named_modules() if name}
    unknown = [name for name in names if name not in modules]
    if unknown:
        close = [m for name in unknown for m in difflib.get_close_matches(name, modules, n=3)]
        hint = f"did you mean {', '.join(dict.fromkeys(close))}? " if close else ""
        raise ValueError(
            f"unknown layer(s) {unknown}; {hint}valid layers include: "
            f"{', '.join(list(modules)[:30])}"
        )
    return {name: modules[name] for name in names}


@contextlib.contextmanager
def capture(
    model: nn.Module,
    names: Sequence[str],
    *,
    keep: Keep | None = None,
    edit: Edit | None = None,
    stop_after: str | None = None,
) -> Iterator[Captured]:
    """Hook the modules called ``names`` while the block runs; yield what they produce.

    Parameters
    ----------
    model
        The network; its modules are hooked, never otherwise changed.
    names
        Module names from ``model.named_modules()``.
    keep
        ``keep(name, output) -> value`` stored under ``name``: e.g. a reduction computed inside
        the hook, before later in-place ops can overwrite the output, or a check that raises.
        Default: the output itself ((B, C, H, W) maps, (B, T, C) tokens, (B, C) vectors...),
        still in the autograd graph when grad is enabled, so gradients can be taken to it.
    edit
        ``edit(name, output) -> replacement`` handed to the rest of the network instead of the
        output (e.g. a copy with some channels zeroed); None leaves the output as it is. The
        kept value is computed from the original output.
    stop_after
        One of ``names``: end the forward pass as soon as that module has run (nothing after
        it is computed); the rest of the ``with`` block is skipped too, without an error.

    Yields
    ------
    Captured
        Filled while the block runs; check ``name in captured`` for modules that did not run.
    """
    modules = find_modules(model, names)
    if stop_after is not None and stop_after not in modules:
        raise ValueError(f"stop_after={stop_after!r} is not one of the hooked names {list(names)}")
    captured = Captured()

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            value = output if keep is None else keep(name, output)
            captured.calls[name] = captured.calls.get(name, 0) + 1
            captured[name] = value
            if name == stop_after:
                raise _StopForward
            return None if edit is None else edit(name, output)

        return hook

    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield captured
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()

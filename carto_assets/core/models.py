"""Models: the built-in CNN, torchvision models, and layer discovery.

A *layer* is a module name from ``model.named_modules()``; its output's channels are the
neurons. :func:`probe_layers` runs one forward pass with a hook on every module to learn each
module's output shape, how often it runs per forward pass and the order in which modules finish,
which is what layer validation, ``auto`` layer selection and ``carto layers`` are built on.

This module never imports dagster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from carto_assets.study import BUILTIN_WIDTHS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Layer sets that follow a model's published structure rather than the generic rule.
KNOWN_DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "builtin": ("block1", "block2", "block3", "block4"),
    # The paper's InceptionV1 blocks (mixed3a..mixed5b).
    "googlenet": (
        "inception3a",
        "inception3b",
        "inception4a",
        "inception4b",
        "inception4c",
        "inception4d",
        "inception4e",
        "inception5a",
        "inception5b",
    ),
}


class LayerError(ValueError):
    """A requested layer is unknown or unusable; the message lists the valid ones."""


class BuiltinCNN(nn.Module):
    """A small four-stage CNN for the built-in datasets.

    ``block1`` is a stride-2 conv-BN-ReLU (full-resolution work is the costliest part of
    training on a CPU); later blocks are conv-BN-ReLU-maxpool. Each ``blockN`` output is one
    stage of the hierarchy the map shows: colours and edges in block1, textures and parts in the
    middle, shapes in block4.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = BUILTIN_WIDTHS) -> None:
        super().__init__()
        chans = [3, *widths]
        for i in range(len(widths)):
            layers: list[nn.Module] = [
                nn.Conv2d(
                    chans[i], chans[i + 1], 3, stride=2 if i == 0 else 1, padding=1, bias=False
                ),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(),
            ]
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            self.add_module(f"block{i + 1}", nn.Sequential(*layers))
        self.n_blocks = len(widths)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_blocks):
            x = getattr(self, f"block{i + 1}")(x)
        return self.head(x)


@dataclass(frozen=True)
class ModelBundle:
    """A ready-to-run model in eval mode with the preprocessing it expects."""

    module: nn.Module
    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float, normalized."""
        x = images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def torchvision_model(
    name: str, weights: str = "none", num_classes: int | None = None
) -> nn.Module:
    """Build ``torchvision.models.<name>`` with weights ``none``, an enum name, or a checkpoint.

    ``DEFAULT`` (or e.g. ``IMAGENET1K_V1``) downloads through torchvision's cache when the machine
    can reach it; a checkpoint path is loaded with ``torch.load(weights_only=True)``.
    """
    import torchvision

    available = set(torchvision.models.list_models())
    if name not in available:
        close = sorted(n for n in available if name.lower()[:4] in n)[:10]
        raise ValueError(
            f"unknown torchvision model {name!r}; "
            f"e.g. {', '.join(close or sorted(available)[:10])} "
            f"(see torchvision.models.list_models())"
        )
    kwargs: dict = {}
    if name in ("googlenet", "inception_v3"):
        # Without pretrained weights these default to aux heads + a warning; the map needs neither.
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    if weights in ("none", "None", None):
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return torchvision.models.get_model(name, weights=None, **kwargs)
    path = Path(weights)
    if path.suffix in (".pt", ".pth") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        elif isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise ValueError(f"checkpoint {path} does not hold a state dict")
        head_classes = _classes_in_state(state)
        if head_classes is not None:
            kwargs["num_classes"] = head_classes
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {path} does not fit torchvision {name}: {exc}") from exc
        return model
    enum = torchvision.models.get_model_weights(name)
    try:
        w = enum[weights]
    except KeyError:
        valid = ", ".join(["none", *enum.__members__])
        raise ValueError(
            f"unknown weights {weights!r} for {name}; valid: {valid} or a path"
        ) from None
    if "aux_logits" in kwargs:
        kwargs.pop("aux_logits")
        kwargs.pop("init_weights")
    return torchvision.models.get_model(name, weights=w, **kwargs)


def _classes_in_state(state: dict) -> int | None:
    for key in ("fc.weight", "classifier.weight", "head.weight", "heads.head.weight"):
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    last = [k for k in state if k.startswith("classifier.") and k.endswith(".weight")]
    if last and state[last[-1]].ndim == 2:
        return int(state[last[-1]].shape[0])
    return None


@dataclass(frozen=True)
class LayerInfo:
    """What one forward pass revealed about a module."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None  # without the batch dimension; None if not a tensor
    calls: int  # times the module ran in one forward pass
    order: int  # position in order of completion (forward order of outputs)
    depth: int

    @property
    def channels(self) -> int | None:
        if self.output_shape is None or len(self.output_shape) < 1:
            return None
        if len(self.output_shape) == 2:  # tokens: (T, C)
            return self.output_shape[1]
        return self.output_shape[0]

    @property
    def map_size(self) -> tuple[int, int]:
        """(height, width) of the map a neuron's argmax lives in."""
        s = self.output_shape or ()
        if len(s) == 3:
            return s[1], s[2]
        if len(s) == 2:
            return s[0], 1
        return 1, 1


def probe_layers(model: nn.Module, input_size: int, device: str = "cpu") -> list[LayerInfo]:
    """Run one forward pass on a zero image and describe every named module.

    Raises a ``ValueError`` naming the input size when the model cannot run on it.
    """
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}
    finished: list[str] = []
    handles = []

    def make_hook(name: str):
        def hook(_mod, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None
            if name not in finished:
                finished.append(name)

        return hook

    named = [(n, m) for n, m in model.named_modules() if n]
    for name, mod in named:
        handles.append(mod.register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    except Exception as exc:
        raise ValueError(
            f"the model fails on a {input_size}x{input_size} input "
            f"(set dataset.image_size to a size it accepts): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    order = {n: i for i, n in enumerate(finished)}
    infos = []
    for name, mod in named:
        if name not in calls:
            continue  # never ran (e.g. aux heads in eval mode)
        infos.append(
            LayerInfo(
                name=name,
                type=type(mod).__name__,
                output_shape=shapes[name],
                calls=calls[name],
                order=order[name],
                depth=name.count(".") + 1,
            )
        )
    infos.sort(key=lambda i: i.order)
    return infos


_POOLING = ("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "Dropout", "Identity")


def default_layers(model_key: str, infos: Sequence[LayerInfo]) -> list[str]:
    """The ``auto`` layer set: the output of each convolutional stage, in forward order.

    Known architectures use their published blocks; otherwise, for every run of modules sharing
    one spatial resolution, the shallowest module that finishes last at that resolution (the
    stage's output), skipping pooling layers and 1x1 maps.
    """
    valid = {i.name for i in infos}
    if model_key in KNOWN_DEFAULT_LAYERS and set(KNOWN_DEFAULT_LAYERS[model_key]) <= valid:
        return list(KNOWN_DEFAULT_LAYERS[model_key])
    usable = [
        i
        for i in infos
        if i.output_shape is not None
        and len(i.output_shape) == 3
        and i.calls == 1
        and not i.type.startswith(_POOLING)
        and i.map_size != (1, 1)
    ]
    stages: list[list[LayerInfo]] = []
    for info in usable:
        if stages and stages[-1][-1].map_size == info.map_size:
            stages[-1].append(info)
        else:
            stages.append([info])
    chosen = []
    for stage in stages:
        shallowest = min(i.depth for i in stage)
        chosen.append([i for i in stage if i.depth == shallowest][-1].name)
    if not chosen:
        token = [
            i
            for i in infos
            if i.output_shape is not None
            and len(i.output_shape) == 2
            and i.calls == 1
            and i.depth <= 3
            and "encoder" in i.name
        ]
        chosen = [i.name for i in token]
    return chosen


def resolve_layers(
    infos: Sequence[LayerInfo], requested: Sequence[str] | str, model_key: str
) -> list[LayerInfo]:
    """Validate requested layer names and return them in forward order."""
    by_name = {i.name: i for i in infos}
    names = default_layers(model_key, infos) if requested == "auto" else list(requested)
    if not names:
        raise LayerError("no layers selected and 'auto' found none; list layers explicitly")
    chosen = []
    for name in names:
        info = by_name.get(name)
        if info is None:
            usable = [i.name for i in infos if i.channels]
            raise LayerError(
                f"unknown layer {name!r}; valid layers: {', '.join(usable)} "
                f"(run `carto layers <model>` to see them with channel counts)"
            )
        if info.output_shape is None:
            raise LayerError(f"layer {name!r} outputs a {info.type} result that is not a tensor")
        if len(info.output_shape) not in (1, 2, 3):
            raise LayerError(
                f"layer {name!r} has output shape {info.output_shape}; expected "
                "(C,), (T, C) tokens or (C, H, W)"
            )
        if info.calls != 1:
            raise LayerError(
                f"layer {name!r} runs {info.calls} times per forward pass (a shared module); "
                "pick a module that runs once"
            )
        chosen.append(info)
    return sorted(chosen, key=lambda i: i.order)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return torch.device(device)

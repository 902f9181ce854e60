"""Networks: the built-in CNN, torchvision models (weights, checkpoints), their input
normalization and the device they run on.

Layer discovery (which modules a model has, the ``auto`` layer set) is
:mod:`carto_assets.core.network.layers`.

This module never imports dagster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

#: The built-in CNN's stage widths and design revision; part of the checkpoint cache key
#: (:func:`carto_assets.storage.fingerprints.model_fingerprint`), so a change to the architecture
#: never loads an old checkpoint.
BUILTIN_WIDTHS = (32, 48, 64, 96)
BUILTIN_REVISION = "stride2-first-block"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    if _is_checkpoint(weights):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            # torch's message recommends weights_only=False (arbitrary code execution from the
            # file); never pass that on.
            raise ValueError(
                f"checkpoint {path} is not a state dict of tensors ({type(exc).__name__}); "
                "save one with torch.save(model.state_dict(), path)"
            ) from None
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


def _is_checkpoint(weights: str) -> bool:
    path = Path(weights)
    return path.suffix in (".pt", ".pth") or path.is_file()


def weights_normalization(
    name: str,
    weights: str | None,
    fallback: tuple[Sequence[float], Sequence[float]] = (IMAGENET_MEAN, IMAGENET_STD),
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The (mean, std) the weights ``weights`` of ``torchvision.models.<name>`` were trained with.

    Read from ``get_model_weights(name)[weights].transforms()``: the weights enum carries its
    preprocessing as metadata, so nothing is downloaded. Those transforms also resize (e.g. to
    256) and centre-crop (e.g. to 224, or 384 for ViT SWAG weights) — ``.crop_size`` and
    ``.resize_size`` on the same object; image sources already resize and centre-crop to the
    study's ``dataset.image_size``, which should be set to that crop size.

    Parameters
    ----------
    name
        A torchvision model name, e.g. ``"resnet50"``.
    weights
        ``none`` (random init) or a checkpoint path: these carry no preprocessing, ``fallback``
        is returned. Otherwise a weights enum member name such as ``DEFAULT``.
    fallback
        (mean, std) for random init and checkpoints, and for weights whose transforms have no
        normalization; ImageNet's statistics by default.

    Returns
    -------
    mean, std
        Three floats each, RGB order.

    Raises
    ------
    ValueError
        An unknown model or weights name.
    """
    import torchvision

    mean, std = fallback
    if weights in ("none", "None", None) or _is_checkpoint(weights):
        return _rgb(mean), _rgb(std)
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"unknown torchvision model {name!r}: {exc}") from None
    try:
        member = enum[weights]
    except KeyError:
        valid = ", ".join(["none", *enum.__members__])
        raise ValueError(
            f"unknown weights {weights!r} for {name}; valid: {valid} or a path"
        ) from None
    transforms = member.transforms()
    # Not every transforms object normalizes (e.g. other tasks' presets); keep the fallback then.
    mean = getattr(transforms, "mean", None) or mean
    std = getattr(transforms, "std", None) or std
    return _rgb(mean), _rgb(std)


def _rgb(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"expected 3 channel statistics, got {list(values)}")
    return float(values[0]), float(values[1]), float(values[2])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return torch.device(device)

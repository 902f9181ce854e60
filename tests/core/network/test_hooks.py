"""The forward-hook helper on a tiny hand-built network: capture, edit, stop, clean-up, errors."""

import pytest
import torch
from torch import nn

from carto_assets.core.network.hooks import capture, find_modules


class _Net(nn.Module):
    """conv -> relu -> shared (twice) -> head; ``shared`` runs twice per pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.shared = nn.Identity()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shared(self.shared(self.relu(self.conv(x))))
        return self.head(y)


def _hooks_left(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


@pytest.fixture
def net() -> _Net:
    return _Net().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))


def test_captures_each_output_in_completion_order(net, x):
    with capture(net, ["head", "relu", "conv"]) as outputs:
        logits = net(x)
    conv = net.conv(x)
    assert list(outputs) == ["conv", "relu", "head"]  # order of completion, not of `names`
    torch.testing.assert_close(outputs["conv"], conv)
    torch.testing.assert_close(outputs["relu"], conv.relu())
    torch.testing.assert_close(outputs["head"], logits)
    assert outputs.calls == {"conv": 1, "relu": 1, "head": 1}


def test_counts_calls_of_a_shared_module(net, x):
    with capture(net, ["shared"]) as outputs:
        net(x)
    assert outputs.calls == {"shared": 2}
    outputs.clear()
    assert dict(outputs) == {} and outputs.calls == {}


def test_kept_outputs_stay_in_the_graph(net, x):
    with capture(net, ["conv"]) as outputs:
        logits = net(x)
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), outputs["conv"])
    assert grad.shape == (2, 4, 5, 5) and grad.abs().sum() > 0


def test_keep_stores_what_it_returns(net, x):
    with capture(
        net, ["conv", "relu"], keep=lambda name, out: (name, out.amax(dim=(2, 3)))
    ) as kept:
        net(x)
    assert kept["relu"][0] == "relu"
    torch.testing.assert_close(kept["relu"][1], net.conv(x).relu().amax(dim=(2, 3)))


def test_edit_replaces_the_output_downstream(net, x):
    def zero_channel_1(name, out):
        copy = out.clone()
        copy[:, 1] = 0
        return copy

    with capture(net, ["relu"], edit=zero_channel_1) as outputs:
        edited = net(x)
    relu = net.conv(x).relu()
    torch.testing.assert_close(outputs["relu"], relu)  # the original output is kept
    expected = net.head(relu * torch.tensor([1.0, 0.0, 1.0, 1.0]).view(1, 4, 1, 1))
    torch.testing.assert_close(edited, expected)
    # After the block the network is as before.
    torch.testing.assert_close(net(x), net.head(relu))


def test_stop_after_ends_the_forward_pass_and_the_block(net, x):
    reached = []
    with capture(net, ["conv", "head"], stop_after="conv") as outputs:
        net(x)
        reached.append("after the forward pass")
    assert list(outputs) == ["conv"] and reached == []
    assert _hooks_left(net) == 0


def test_hooks_are_removed_after_the_block(net):
    with capture(net, ["conv", "relu", "shared", "head"]):
        assert _hooks_left(net) == 4
    assert _hooks_left(net) == 0


def test_hooks_are_removed_after_an_exception(net, x):
    def fail(name, out):
        raise RuntimeError(f"checked {name}")

    with pytest.raises(RuntimeError, match="checked relu"):
        with capture(net, ["relu"], keep=fail):
            net(x)
    assert _hooks_left(net) == 0
    with pytest.raises(KeyError):
        with capture(net, ["conv"]):
            raise KeyError("in the block")
    assert _hooks_left(net) == 0


def test_unknown_names_are_named_with_close_matches(net):
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['conv2', 'nope'\]") as info:
        with capture(net, ["conv", "conv2", "nope"]):
            pass
    assert "did you mean conv?" in str(info.value)
    assert "valid layers include: conv, relu, shared, head, head.0, head.1" in str(info.value)
    assert _hooks_left(net) == 0
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \[''\]"):
        find_modules(net, [""])  # the model itself is not a layer
    with pytest.raises(ValueError, match="stop_after='head'"):
        with capture(net, ["conv"], stop_after="head"):
            pass


def test_find_modules_keeps_the_order_asked(net):
    assert list(find_modules(net, ["head", "conv"])) == ["head", "conv"]
    assert find_modules(net, ["head.1"])["head.1"] is net.head[1]

"""The CNN backbones of the raw-image mode, in plain torch: ResNets whose last map's cells are "regions".

A `ResNet` is split into `base` (conv1, bn1, relu, maxpool, layer1, layer2, layer3)
and `top` (layer4); `forward` maps pixels (B, 3, T, T) to grid features
(B, h*w, C) with the cells in row-major order, C = 32 x width (2048 at width 64).

Two block styles exist, as in the weight files the sources publish:
- "caffe" (the BUTD detector's network, and the older ImageNet ResNets as the
  official code builds them): the stride of a block sits on its first 1x1
  convolution, and the max-pool has padding 0 and rounds up (ceil_mode);
- "torchvision" (ResNeXt-101 32x8d, ImageNet or WSL): the stride sits on the 3x3
  convolution, which has 32 groups, and the max-pool has padding 1 and rounds down.

Every BatchNorm stays in eval mode, whatever `train()` says: its running statistics
never change and it normalises with them (the official code does the same; with
batches of a few images per device they would be noise).

`set_fixed_blocks(k)` decides which parts train: k = 4 freezes everything, k = 3
leaves layer4 trainable, 2 also layer3, 1 also layer2, 0 everything (conv1, bn1
and layer1 included).

Weights come from one file (`load_backbone_weights`): VSE-infinity's BUTD file
`{'base': state_dict, 'top': state_dict}` for the detector, a torchvision-layout
state dict (`conv1.weight`, `layer1.0.conv1.weight`, ..., `fc.*` ignored) for the
others. Nothing is ever downloaded.
"""
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from lib.errors import XDimError, first_line
from lib.formats.checkpoint import check_state_dict

FULL_WIDTH = 64
NO_BACKBONE_WEIGHTS = "none"
# The blocks freeze in this order as fixed_blocks grows: stem + layer1, layer2, layer3, layer4.
FREEZE_ORDER = (("conv1", "bn1", "layer1"), ("layer2",), ("layer3",), ("layer4",))
ALL_FROZEN = len(FREEZE_ORDER)


@dataclass(frozen=True)
class Architecture:
    """blocks: bottlenecks per layer; groups, group_width: the 3x3 convolution's groups and
    channels per group at full width (None: as many as the block's planes); caffe: block style."""
    blocks: tuple
    groups: int = 1
    group_width: int = None
    caffe: bool = True


RESNET50, RESNET101, RESNET152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)
RESNEXT = Architecture(RESNET101, groups=32, group_width=8, caffe=False)
SOURCES = {
    "detector": Architecture(RESNET101),
    "imagenet": Architecture(RESNET101),
    "imagenet_res50": Architecture(RESNET50),
    "imagenet_res152": Architecture(RESNET152),
    "imagenet_resnext": RESNEXT,
    "wsl": RESNEXT,
}
# Where each source's weight file comes from, and what it holds (for the error messages and --help).
WEIGHT_FILES = {
    "detector": "VSE-infinity's original_updown_backbone.pth (linked from its README), "
                "a dict {'base': state_dict, 'top': state_dict} of the BUTD Faster R-CNN's ResNet-101",
    "imagenet": "torchvision's ImageNet ResNet-101 file resnet101-5d3b4d8f.pth, a state dict "
                "conv1.weight, bn1.*, layer1.0.conv1.weight, ..., fc.*",
    "imagenet_res50": "torchvision's ImageNet ResNet-50 file resnet50-19c8e357.pth, a state dict "
                      "conv1.weight, bn1.*, layer1.0.conv1.weight, ..., fc.*",
    "imagenet_res152": "torchvision's ImageNet ResNet-152 file resnet152-b121ed2d.pth, a state dict "
                       "conv1.weight, bn1.*, layer1.0.conv1.weight, ..., fc.*",
    "imagenet_resnext": "torchvision's ImageNet ResNeXt-101 32x8d file resnext101_32x8d-8ba56ff5.pth, "
                        "a state dict conv1.weight, bn1.*, layer1.0.conv1.weight, ..., fc.*",
    "wsl": "facebookresearch/WSL-Images' ResNeXt-101 32x8d file ig_resnext101_32x8-c38310e5.pth, "
           "a state dict conv1.weight, bn1.*, layer1.0.conv1.weight, ..., fc.*",
}
# The detector file's two nn.Sequential parts: index -> our module name.
DETECTOR_PARTS = {"base": {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3"},
                  "top": {"0": "layer4"}}


def check_backbone_source(name, what="--backbone_source"):
    if name not in SOURCES:
        raise XDimError(f"{what} {name!r}: unknown (choose from {', '.join(SOURCES)})")


def output_channels(width):
    """Channels of the grid features of a ResNet of stem width `width` (2048 at 64)."""
    return 32 * width


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) with a shortcut; x (B, C_in, H, W) -> (B, 4 planes, H/s, W/s)."""

    def __init__(self, inplanes, planes, stride, inner, groups, caffe):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, inner, 1, stride=stride if caffe else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=1 if caffe else stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """The backbone of `source` (SOURCES) at stem width `width` (64 is the published network;
    smaller widths keep the block structure for tests and the demo). Module names follow
    torchvision's, so its state dicts load as they are."""

    def __init__(self, source="detector", width=FULL_WIDTH):
        super().__init__()
        check_backbone_source(source)
        arch = SOURCES[source]
        self.source = source
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True) if arch.caffe
                        else nn.MaxPool2d(3, stride=2, padding=1))
        inplanes = width
        for index, blocks in enumerate(arch.blocks):
            planes = width * 2 ** index
            inner = planes if arch.group_width is None else planes * arch.group_width * arch.groups // FULL_WIDTH
            layer = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layer.append(Bottleneck(inplanes, planes, stride, inner, arch.groups, arch.caffe))
                inplanes = planes * 4
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
        self.out_channels = inplanes
        self.fixed_blocks = 0

    def base(self, pixels):
        """pixels (B, 3, T, T) -> layer3's map (B, C/2, h', w')."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(pixels))))
        return self.layer3(self.layer2(self.layer1(x)))

    def top(self, x):
        """layer3's map -> layer4's map (B, C, h, w)."""
        return self.layer4(x)

    def forward(self, pixels):
        """pixels (B, 3, T, T) -> grid features (B, h*w, C), cells in row-major order."""
        return self.top(self.base(pixels)).flatten(2).transpose(1, 2)

    def train(self, mode=True):
        """Train mode for the convolutions; every BatchNorm stays in eval mode (fixed statistics)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def set_fixed_blocks(self, fixed_blocks):
        """Freeze the first `fixed_blocks` parts of FREEZE_ORDER (0: all train, 4: none does)."""
        if not 0 <= fixed_blocks <= ALL_FROZEN:
            raise ValueError(f"fixed_blocks must lie in 0..{ALL_FROZEN}, not {fixed_blocks}")
        self.fixed_blocks = fixed_blocks
        for index, names in enumerate(FREEZE_ORDER):
            for name in names:
                getattr(self, name).requires_grad_(index >= fixed_blocks)


# ---------------------------------------------------------------- weight files

def _weight_file_problem(path, source, problem):
    return XDimError(f"--backbone_path {path}: {problem}; --backbone_source {source} expects "
                     f"{WEIGHT_FILES[source]}")


def read_weight_file(path, source):
    """The state dict (our module names) held by the weight file `path` for `source`.

    XDimError (one line naming the file, the layout expected and where such files come
    from) for a missing, unreadable or foreign file.
    """
    if not os.path.isfile(path):
        raise _weight_file_problem(path, source, "no such file" + (" (a folder)" if os.path.isdir(path) else ""))
    try:
        held = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated, corrupt or foreign files
        raise _weight_file_problem(path, source, f"is not a readable PyTorch weight file "
                                                 f"({first_line(error)[:100]})") from None
    if not isinstance(held, dict):
        raise _weight_file_problem(path, source, f"holds a {type(held).__name__}, not a dict of tensors")
    if source == "detector":
        return _detector_state(held, path, source)
    if set(held) == {"base", "top"}:
        raise _weight_file_problem(path, source, "holds the BUTD detector's {'base', 'top'} parts "
                                                 "(use --backbone_source detector)")
    state = {key: value for key, value in held.items() if not key.startswith("fc.")}
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise _weight_file_problem(path, source, "is not a state dict (its values are not all tensors)")
    return state


def _detector_state(held, path, source):
    if set(held) != {"base", "top"} or not all(isinstance(held[part], dict) for part in held):
        raise _weight_file_problem(path, source, f"holds keys {sorted(map(str, held))[:4]}, not the two "
                                                 "parts 'base' and 'top'")
    state = {}
    for part, names in DETECTOR_PARTS.items():
        for key, tensor in held[part].items():
            index, _, rest = key.partition(".")
            if index not in names:
                raise _weight_file_problem(path, source, f"unexpected key {part}[{key!r}]")
            state[f"{names[index]}.{rest}"] = tensor
    return state


def load_backbone_weights(resnet, path):
    """Load the weight file `path` into `resnet` (a ResNet), checking every key and shape first.

    Files written before PyTorch 0.4.1 (torchvision's 2017 ImageNet ResNets) hold no BatchNorm
    `num_batches_tracked` counters; they are taken as 0 (the counter is unused: the backbone's
    BatchNorms never update their statistics).
    """
    state = read_weight_file(path, resnet.source)
    for key, tensor in resnet.state_dict().items():
        if key.endswith(".num_batches_tracked"):
            state.setdefault(key, torch.zeros_like(tensor))
    try:
        check_state_dict(state, resnet.state_dict(), f"--backbone_path {path}")
    except XDimError as error:
        raise XDimError(f"{error}; --backbone_source {resnet.source} expects {WEIGHT_FILES[resnet.source]}") from None
    resnet.load_state_dict(state)

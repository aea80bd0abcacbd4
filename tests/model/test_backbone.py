"""The raw-image mode's ResNets (lib/model/backbone.py): structure, grid order, frozen parts,
fixed BatchNorm statistics, weight files and their refusals, grid dropping."""
import numpy as np
import pytest
import torch

from lib.errors import XDimError
from lib.model.backbone import ResNet, load_backbone_weights
from lib.model.xdim_model import drop_grid_cells

TINY = 4  # stem width of the tiny networks: the real block structure, 32 x 4 = 128 output channels


def pixels(n=2, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def parameter_count(module):
    return sum(p.numel() for p in module.parameters())


def test_full_size_networks_have_the_published_parameter_counts():
    # torchvision's counts (resnet101 44,549,160 and resnext101_32x8d 88,791,336) without the
    # classifier fc (2048 x 1000 + 1000 = 2,049,000), which the backbone leaves out.
    assert parameter_count(ResNet("detector")) == 44_549_160 - 2_049_000
    assert parameter_count(ResNet("wsl")) == 88_791_336 - 2_049_000


def test_block_styles_of_the_sources():
    caffe, torchvision = ResNet("detector", TINY), ResNet("imagenet_resnext", 8)
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert torchvision.layer2[0].conv1.stride == (1, 1) and torchvision.layer2[0].conv2.stride == (2, 2)
    assert torchvision.layer2[0].conv2.groups == 32 and caffe.layer2[0].conv2.groups == 1
    assert (caffe.maxpool.padding, caffe.maxpool.ceil_mode) == (0, True)
    assert (torchvision.maxpool.padding, torchvision.maxpool.ceil_mode) == (1, False)
    assert [len(ResNet(s, TINY).layer3) for s in ("imagenet_res50", "imagenet", "imagenet_res152")] == [6, 23, 36]


def test_grid_features_are_layer4_cells_in_row_major_order():
    net = ResNet("detector", TINY).eval()
    x = pixels()
    with torch.no_grad():
        grid = net(x)
        layer4 = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
    # 64 -> conv1 32 -> max-pool (ceil, no padding) 16 -> 16, 8, 4, 2
    assert layer4.shape == (2, 128, 2, 2) and grid.shape == (2, 4, 128)
    assert torch.equal(grid[1, 1 * 2 + 0], layer4[1, :, 1, 0])
    assert torch.equal(grid[0, 0 * 2 + 1], layer4[0, :, 0, 1])


def trainable_parts(net):
    names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
    return {name for name in names if all(p.requires_grad for p in getattr(net, name).parameters())}


def test_fixed_blocks_freeze_from_the_stem_up():
    net = ResNet("detector", TINY)
    expected = {4: set(), 3: {"layer4"}, 2: {"layer3", "layer4"}, 1: {"layer2", "layer3", "layer4"},
                0: {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}}
    for fixed, parts in expected.items():
        net.set_fixed_blocks(fixed)
        assert trainable_parts(net) == parts, fixed
    with pytest.raises(ValueError):
        net.set_fixed_blocks(5)


def test_batchnorm_statistics_never_change_in_training():
    net = ResNet("detector", TINY).train()
    net.set_fixed_blocks(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        net(pixels()).square().mean().backward()
        optimizer.step()
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert net.conv1.training and net.layer4[0].conv1.weight.grad is not None
    # and the BatchNorms normalise with the stored statistics: train and eval forwards agree
    with torch.no_grad():
        assert torch.allclose(net(pixels()), net.eval()(pixels()))


# ---------------------------------------------------------------- weight files

def detector_file(net, path):
    """VSE-infinity's layout, written out independently of lib.model.backbone.DETECTOR_PARTS:
    base = Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3), top = Sequential(layer4)."""
    base_modules = {"0": net.conv1, "1": net.bn1, "4": net.layer1, "5": net.layer2, "6": net.layer3}
    base = {f"{i}.{k}": v for i, module in base_modules.items() for k, v in module.state_dict().items()}
    top = {f"0.{k}": v for k, v in net.layer4.state_dict().items()}
    torch.save({"base": base, "top": top}, path)
    return str(path)


def randomised(net, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen))
    return net


def test_detector_file_loads_every_weight(tmp_path):
    source = randomised(ResNet("detector", TINY))
    path = detector_file(source, tmp_path / "original_updown_backbone.pth")
    target = ResNet("detector", TINY)
    load_backbone_weights(target, path)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_torchvision_file_loads_and_its_classifier_is_ignored(tmp_path):
    source = randomised(ResNet("wsl", 8))
    state = dict(source.state_dict(), **{"fc.weight": torch.zeros(1000, 256), "fc.bias": torch.zeros(1000)})
    torch.save(state, tmp_path / "ig_resnext.pth")
    target = ResNet("wsl", 8)
    load_backbone_weights(target, str(tmp_path / "ig_resnext.pth"))
    assert torch.equal(target.layer4[2].conv3.weight, source.layer4[2].conv3.weight)


def test_files_from_before_batchnorm_counters_load(tmp_path):
    # torchvision's 2017 ImageNet files hold no num_batches_tracked entries
    source = randomised(ResNet("imagenet_res50", TINY))
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "resnet50-19c8e357.pth")
    target = ResNet("imagenet_res50", TINY)
    load_backbone_weights(target, str(tmp_path / "resnet50-19c8e357.pth"))
    assert torch.equal(target.layer1[0].bn1.running_var, source.layer1[0].bn1.running_var)
    assert int(target.bn1.num_batches_tracked) == 0


def bad_file_message(tmp_path, source, write):
    path = tmp_path / "weights.pth"
    write(path)
    with pytest.raises(XDimError) as error:
        load_backbone_weights(ResNet(source, TINY), str(path))
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "expects" in message
    return message


def test_missing_file_and_folder_are_named(tmp_path):
    assert "no such file" in bad_file_message(tmp_path, "detector", lambda p: None)
    assert "original_updown_backbone.pth" in bad_file_message(tmp_path, "detector", lambda p: None)
    assert "(a folder)" in bad_file_message(tmp_path, "imagenet", lambda p: p.mkdir())


def test_unreadable_and_foreign_files_are_refused(tmp_path):
    assert "not a readable PyTorch weight file" in bad_file_message(
        tmp_path, "imagenet", lambda p: p.write_text("not weights"))
    assert "holds a list" in bad_file_message(tmp_path, "imagenet", lambda p: torch.save([1, 2], p))
    assert "resnet101-5d3b4d8f.pth" in bad_file_message(tmp_path, "imagenet", lambda p: p.write_bytes(b"PK\x03\x04xx"))


def test_detector_and_torchvision_layouts_are_not_confused(tmp_path):
    net = ResNet("detector", TINY)
    message = bad_file_message(tmp_path, "imagenet", lambda p: detector_file(net, p))
    assert "use --backbone_source detector" in message
    message = bad_file_message(tmp_path, "detector", lambda p: torch.save(net.state_dict(), p))
    assert "not the two parts 'base' and 'top'" in message and "{'base': state_dict" in message


def test_another_network_is_refused_by_key_or_shape(tmp_path):
    res50 = ResNet("imagenet_res50", TINY).state_dict()
    message = bad_file_message(tmp_path, "imagenet", lambda p: torch.save(res50, p))
    assert "missing key 'layer3.6.conv1.weight'" in message and "ResNet-101" in message
    wider = ResNet("imagenet", 8).state_dict()
    message = bad_file_message(tmp_path, "imagenet", lambda p: torch.save(wider, p))
    assert "key 'conv1.weight' has shape (8, 3, 7, 7)" in message
    with_extra = dict(ResNet("imagenet", TINY).state_dict(), extra=torch.zeros(1))
    assert "unexpected key 'extra'" in bad_file_message(tmp_path, "imagenet", lambda p: torch.save(with_extra, p))


def test_detector_part_with_a_stray_key_is_refused(tmp_path):
    def write(path):
        detector_file(ResNet("detector", TINY), path)
        held = torch.load(path)
        held["base"]["2.weight"] = torch.zeros(1)
        torch.save(held, path)
    assert "unexpected key base['2.weight']" in bad_file_message(tmp_path, "detector", write)


# ---------------------------------------------------------------- grid dropping

def reference_drop(features, u1, u2):
    """The rule written per image: keep cells with u1 > 0.2 u2 when u2 > 0.2, else all; kept first."""
    rows, lengths = [], []
    for i in range(len(features)):
        keep = u1[i] > 0.2 * u2[i] if u2[i] > 0.2 else np.ones(features.shape[1], bool)
        kept = features[i][torch.from_numpy(np.nonzero(keep)[0])]
        rows.append(torch.cat([kept, features.new_zeros(features.shape[1] - len(kept), features.shape[2])]))
        lengths.append(len(kept))
    return torch.stack(rows)[:, :max(lengths)], lengths


def test_grid_dropping_follows_the_rule():
    features = torch.randn(6, 16, 3) + 5  # no zero cell: padding is recognisable
    u2 = np.array([0.1, 0.9, 0.5, 0.2, 1.0, 0.95])  # two images keep every cell
    u1 = np.random.RandomState(0).rand(6, 16) * 0.3  # around 0.2 u2, so some cells go
    draws = iter([u1, u2])
    rng = type("Draws", (), {"rand": staticmethod(lambda *shape: next(draws))})
    kept, lengths = drop_grid_cells(features, rng)
    expected, expected_lengths = reference_drop(features, u1, u2)
    assert lengths.tolist() == expected_lengths and lengths[0] == 16 and min(expected_lengths) < 16
    assert torch.equal(kept, expected)

"""Official-format checkpoints of the raw-image mode: the backbone stored three times
(`backbone.resnet.*`, `backbone.base.*`, `backbone.top.*`) plus its unused classifier, the FC as
`image_encoder.fc.*`. They load through the official key table and encode images as the
official network would; saved again in our format they load to the same model."""
import torch
from helpers import official_opt, official_parts, write_official_checkpoint

from lib.formats.checkpoint import new_checkpoint
from lib.model.backbone import ResNet
from lib.model.encoders import l2norm
from lib.model.xdim_model import XDimModel

D = 32


def official_image_part(seed=0):
    """Part 0 of an official backbone checkpoint, written out from the release's module tree:
    EncoderImageFull(backbone=ResnetFeatureExtractor(resnet, base, top), image_encoder.fc).
    `base` = Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3), `top` = Sequential(layer4):
    the same tensors as `resnet`'s, saved again under those names."""
    gen = torch.Generator().manual_seed(seed)
    resnet = ResNet("detector").state_dict()
    for key, tensor in resnet.items():
        if tensor.is_floating_point():
            resnet[key] = (torch.rand(tensor.shape, generator=gen) + 0.5 if "running_var" in key
                           else torch.randn(tensor.shape, generator=gen) * 0.05)
    part = {f"backbone.resnet.{k}": v for k, v in resnet.items()}
    part.update({"backbone.resnet.fc.weight": torch.zeros(1000, 2048), "backbone.resnet.fc.bias": torch.zeros(1000)})
    base_names = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
    for key, tensor in resnet.items():
        module, _, rest = key.partition(".")
        name = f"backbone.base.{base_names[module]}.{rest}" if module in base_names else f"backbone.top.0.{rest}"
        part[name] = tensor
    part["image_encoder.fc.weight"] = torch.randn(D, 2048, generator=gen) * 0.02
    part["image_encoder.fc.bias"] = torch.randn(D, generator=gen) * 0.02
    return part, resnet


def official_backbone_checkpoint(path, bert_dir):
    image, resnet = official_image_part()
    _, text, similarity = official_parts(bert_dir, d=D)
    opt = official_opt(d=D)
    opt.precomp_enc_type, opt.input_scale_factor = "backbone", 0.25
    opt.backbone_path = "/tmp/data/weights/original_updown_backbone.pth"  # the authors' path: never read
    write_official_checkpoint(path, [image, text, similarity], opt)
    return image, resnet


def test_official_backbone_checkpoint_loads_and_encodes_as_the_official_network(tmp_path, tiny_bert_dir):
    path = str(tmp_path / "official_grid.pth")
    image, resnet = official_backbone_checkpoint(path, tiny_bert_dir)
    model = XDimModel.from_checkpoint(path, bert_path=tiny_bert_dir)
    assert model.config.uses_backbone and model.config.input_size == 64
    state = model.state_dict()
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in resnet.items())
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 50
    # The official forward: base then top (the Sequential copies), cells flattened, FC, l2norm.
    reference = ResNet("detector").eval()
    reference.load_state_dict(resnet)
    with torch.no_grad():
        cells = reference.layer4(reference.base(pixels))
        cells = cells.view(2, 2048, -1).permute(0, 2, 1)
        expected = l2norm(cells @ image["image_encoder.fc.weight"].T + image["image_encoder.fc.bias"])
        encoded = model.encode_images(pixels)
    assert encoded.shape == (2, 4, D)  # 64 pixels: a 2 x 2 grid
    assert torch.allclose(encoded, expected, atol=1e-5)

    ours = tmp_path / "ours.pth"
    torch.save(new_checkpoint(model), ours)
    again = XDimModel.from_checkpoint(str(ours))
    assert again.config.as_dict() == model.config.as_dict()
    with torch.no_grad():
        assert torch.equal(again.encode_images(pixels), encoded)

"""lib.model.xdim_model: the training forward with padded regions masked (--mask_padded_regions)."""
import torch

from lib.model.config import ModelConfig
from lib.model.xdim_model import XDimModel

IMG_DIM, EMBED = 32, 16


def test_training_forward_with_region_lengths_scores_each_image_as_if_unpadded(tiny_bert_dir):
    # catches: XDimModel.forward dropping region_lengths (the flag would change nothing in training).
    torch.manual_seed(0)
    model = XDimModel(ModelConfig(img_dim=IMG_DIM, embed_size=EMBED, bert=tiny_bert_dir)).eval()
    region_lengths = [6, 3, 1]
    images = torch.randn(3, 6, IMG_DIM)
    for image, length in enumerate(region_lengths):
        images[image, length:] = 0.0  # how a training batch pads the images whose regions were dropped
    vocab = model.bert_config["vocab_size"]
    captions, lengths = torch.randint(5, vocab, (2, 5)), torch.tensor([5, 3])
    captions[1, 3:] = 0
    with torch.no_grad():
        masked = model(images, captions, lengths, torch.tensor(region_lengths))
        unpadded = torch.cat([model(images[i:i + 1, :length], captions, lengths)
                              for i, length in enumerate(region_lengths)])
        padded = model(images, captions, lengths)
    torch.testing.assert_close(masked, unpadded, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(padded[1:], unpadded[1:], atol=1e-4)  # the padding does matter without the mask

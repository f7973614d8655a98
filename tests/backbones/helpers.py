"""What the backbone tests share: random uint8 images, the normalisation by hand, a tiny MSN config."""

import torch

from raddist.backbones.registry import BackboneConfig


def random_images(config, batch=4, seed=0, gray=True):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, config.input_size, config.input_size) if gray else (batch, 3, config.input_size, config.input_size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def manual_normalize(config, images):
    x = images.float() / 255
    if x.dim() == 3:
        x = x.unsqueeze(1).repeat(1, 3, 1, 1)
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (x - mean) / std


TINY_MSN = BackboneConfig(
    "tiny_msn", "transformers", "none/tiny-msn", 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 8, 32, 3, "vit",
    kwargs={"model_type": "vit_msn", "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
            "intermediate_size": 64, "image_size": 32, "patch_size": 8, "layer_norm_eps": 1e-6},
)

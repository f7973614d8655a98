"""A team's own backbone, as a `python:tests.backbones.own_model:small_vit` spec name uses it: no timm,
no registry entry, its contract declared on its factory."""

import torch

from raddist.backbones.resolve import backbone


class OwnViT(torch.nn.Module):
    """A class token, two register tokens, then the patch tokens; forward gives every block's tokens."""

    def __init__(self, dim=32, depth=4, patch=8, registers=2):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, dim, patch, patch)
        self.prefix = torch.nn.Parameter(torch.randn(1, 1 + registers, dim) * 0.02)
        self.blocks = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.prefix.expand(len(x), -1, -1), x], dim=1)
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out


@backbone(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), patch_size=8, embed_dim=32, depth=4,
          prefix_tokens=3, cls_token=True, license="proprietary (our hospital)")
def small_vit(pretrained: bool = False) -> torch.nn.Module:
    return OwnViT()


@backbone(size=32, mean=(0.5, 0.5, 0.5), patch_size=8, depth=4)
def incomplete(pretrained: bool = False) -> torch.nn.Module:
    return OwnViT()


def undeclared(pretrained: bool = False) -> torch.nn.Module:
    return OwnViT()

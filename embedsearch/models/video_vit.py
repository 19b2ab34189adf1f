"""The MNIST study's "video" ViT: each image repeated as `frames` frames, embedded as tubelets (tubelet × patch ×
patch cubes, one token each) by a 3-D convolution, then a plain transformer (timm blocks) with a class token.

`embedsearch pretrain --method video-mae` trains it as a masked autoencoder (L1 on the masked tubelets only); the
`ckpt:` backbone embeds an image by repeating it into frames and taking the class token, like any ViT checkpoint.
"""

from __future__ import annotations


def make_video_vit(img_size: int, patch_size: int, frames: int, tubelet: int, embed_dim: int, depth: int,
                   num_heads: int):
    import torch
    from timm.models.vision_transformer import Block
    from torch import nn

    if frames % tubelet:
        raise ValueError(f"tubelet {tubelet} does not divide frames {frames}")

    class VideoViT(nn.Module):
        num_prefix_tokens = 1

        def __init__(self):
            super().__init__()
            self.frames, self.tubelet, self.patch = frames, tubelet, patch_size
            self.patch_embed = nn.Conv3d(3, embed_dim, (tubelet, patch_size, patch_size),
                                         stride=(tubelet, patch_size, patch_size))
            self.n_tokens = (frames // tubelet) * (img_size // patch_size) ** 2
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.randn(1, self.n_tokens + 1, embed_dim) * 0.02)
            self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(embed_dim)

        def video(self, imgs):
            """(B, 3, H, W) images → (B, 3, frames, H, W): the same image in every frame."""
            return imgs.unsqueeze(2).expand(-1, -1, self.frames, -1, -1)

        def tokens(self, imgs):
            """Tubelet tokens with their positions, without the class token: (B, N, D)."""
            return self.patch_embed(self.video(imgs)).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]

        def encode(self, x):
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
            return self.norm(self.blocks(torch.cat([cls, x], dim=1)))

        def forward_features(self, imgs):
            return self.encode(self.tokens(imgs))

        def forward(self, imgs):
            return self.forward_features(imgs)[:, 0]

    return VideoViT()


def tubelets(video, tubelet: int, patch: int):
    """(B, 3, T, H, W) → (B, N, tubelet·patch·patch·3): the reconstruction targets, in token order."""
    B, C, T, H, W = video.shape
    x = video.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(B, (T // tubelet) * (H // patch) * (W // patch), tubelet * patch * patch * C)

"""Stage 2 — what turns images into vectors: backbone specs and configuration, the backbone kinds (timm, open_clip,
torch.hub, `ckpt:`, pixels), weights and checkpoints, and the batched embedding runner. Add a backbone kind in
`specs.py` (its prefix) and `backbones.py` (its builder)."""

"""Training our own backbone: self-supervised pretraining of a small ViT, written in the `ckpt:` format that
`embedsearch.models` indexes like any other backbone."""

"""Stage 1 — where images come from: source specs, dataset readers (folders, manifests, digits, MNIST, CIFAR) that
yield records with stable int64 ids, and safe image decoding. Add a dataset kind in `specs.py` + `datasets.py`;
what the modules share (`Record`, `Source`, path ids, `ImageLoadError`) is in `base.py`, shard reading in `shards.py`."""

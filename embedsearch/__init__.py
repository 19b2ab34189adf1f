"""embedsearch: embed image datasets with vision backbones once, then search and evaluate from the index."""

__version__ = "0.1.0"

"""The API's routes, one module per kind of resource; `embedsearch.serve.app` includes them."""

"""`embedsearch serve`: the HTTP API and the web page over served index snapshots (`app`, `runner`)."""

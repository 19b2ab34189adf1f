"""What every stage shares and that depends on none of them: the exception hierarchy, atomic files, units, vector
helpers (normalising, exact top-k) and the row lists and output formats that commands print."""

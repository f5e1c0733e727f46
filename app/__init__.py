"""The HTTP service and the `icseg` command line."""

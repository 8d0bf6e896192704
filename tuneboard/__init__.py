"""The `tuneboard` command line (see tuneboard/cli.py)."""

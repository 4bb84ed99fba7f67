"""Subcommands of the `opmon` command line; each module exposes `register(subparsers)`."""

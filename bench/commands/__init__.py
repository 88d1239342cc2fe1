"""The implementation of each `python -m bench` command, one module per group; bench.cli imports only the one a command line names."""

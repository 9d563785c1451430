"""The `rtr` command line (see `langchain_rtr.cli.main`)."""

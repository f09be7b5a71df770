"""The `ecdctr` command: argument parsing, logging set-up and the spec commands."""

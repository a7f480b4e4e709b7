"""The `reprogram` command line."""

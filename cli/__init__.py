"""The `fedtl` command line."""

"""`python -m labctl` is the `labctl` command."""

from labctl.cli import main

main()

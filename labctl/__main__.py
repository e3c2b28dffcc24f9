"""`python -m labctl` is the `labctl` command."""

from labctl.cli import main

if __name__ == "__main__":  # not when a worker process (labctl.analysis.worker) imports it
    main()

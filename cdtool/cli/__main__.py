"""`python -m cdtool.cli`: the same command as `cdtool`."""

from cdtool.cli import main

if __name__ == "__main__":
    main()

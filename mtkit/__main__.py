"""`python -m mtkit` is the same as the `mtkit` command."""

from mtkit.cli import main

if __name__ == "__main__":
    main()

"""Entry point for `python -m ecdctr`."""

from ecdctr.cli.main import main

if __name__ == "__main__":
    main()

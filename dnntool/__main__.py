"""``python -m dnntool``."""

from dnntool.cli import main

if __name__ == "__main__":
    main()

"""``python -m attnlab`` (and ``torchrun ... -m attnlab``): the ``attnlab`` command."""

from attnlab.cli.main import main

if __name__ == "__main__":
    main()

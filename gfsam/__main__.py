"""``python -m gfsam``: see `gfsam.cli`."""

import sys

from gfsam.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m backend.run`: everything on one machine (see `backend.supervisor`)."""

import sys

from backend.supervisor import main

if __name__ == "__main__":
    sys.exit(main())

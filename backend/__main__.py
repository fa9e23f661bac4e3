"""`python -m backend` is `python -m backend.run`."""

import sys

from backend.run import main

sys.exit(main())

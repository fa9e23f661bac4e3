"""`python -m backend` is `python -m backend.run` (the supervisor)."""

import sys

from backend.supervisor import main

sys.exit(main())

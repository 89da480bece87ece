"""`python -m localrun.worker`: a runner process (see localrun.worker.protocol)."""

from __future__ import annotations

import sys

from localrun.worker.main import main

if __name__ == "__main__":
    sys.exit(main())

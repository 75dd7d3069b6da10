"""`python -m renderfarm_worker`: the same as farm-worker."""

import sys

from renderfarm_worker.daemon import main

sys.exit(main())

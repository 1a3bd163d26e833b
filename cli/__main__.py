"""`python -m cli ...` is `faultwatch ...` (tests and the demo start workers this way)."""

import sys

from cli.main import main

sys.exit(main())

"""`python -m nas.cli`: the `hwnas` command line."""

import sys

from nas.cli import main

sys.exit(main())

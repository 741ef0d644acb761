"""``python -m fluxstream.cli``: what the dev stack spawns for its worker and query service."""

import sys

from fluxstream.cli.main import main

sys.exit(main())

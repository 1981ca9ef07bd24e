"""``python -m xentmem.agent ...`` runs ``xentmem agent ...`` (no console script needed)."""

import sys

from xentmem.cli._app import run

sys.exit(run(["agent", *sys.argv[1:]]))

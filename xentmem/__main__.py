"""``python -m xentmem ...`` runs the ``xentmem`` command (no console script on PATH needed)."""

from xentmem.cli import main

main()

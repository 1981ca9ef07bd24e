"""Suite-wide settings.

Hypothesis runs derandomized by default: the default suite (and CI) sees the same examples every
run, so a failure is reproducible and never a coin toss. Set ``XENTMEM_HYPOTHESIS=explore`` to
draw fresh random examples (what the long ``slow`` runs are for).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("XENTMEM_HYPOTHESIS", "repeatable"))

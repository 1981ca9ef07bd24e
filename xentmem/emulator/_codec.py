"""The page codec of compressing clients: lz4 blocks (Xen used LZO1X; the ABI never shows which).

The data path is native (``_pagecodec``, linked to Debian's liblz4): a PUT compresses a page with
one call and one ``bytes`` made, a GET decodes straight into the caller's frame (no intermediate
``bytes``, no second copy). Debian's liblz4 also decodes a page in about two thirds of the time
the copy python-lz4 builds in takes here. ``decompress`` (python-lz4, same block format) gives a
page as ``bytes`` off the data path (save, listing, tests).
"""

from __future__ import annotations

import lz4.block

try:
    from xentmem.emulator._pagecodec import compress_page, decode_into
except ImportError as exc:  # a source tree nobody installed: say what to do
    raise ImportError("xentmem's page codec (xentmem/emulator/_pagecodec.c) is not built: run "
                      "scripts/bootstrap, or pip install -e . (needs gcc, python3-dev and "
                      "liblz4-1)") from exc

__all__ = ["compress_page", "decode_into", "decompress"]

decompress = lz4.block.decompress

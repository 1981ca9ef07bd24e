"""The page codec of compressing clients: lz4 blocks (Xen used LZO1X; the ABI never shows which).

The data path is native (``_pagecodec``, linked to Debian's liblz4): a PUT compresses a page with
one call and one ``bytes`` made, a GET decodes straight into the caller's frame (no intermediate
``bytes``, no second copy). Debian's liblz4 also decodes a page about a quarter faster here than
the copy python-lz4 builds in. ``decompress`` (python-lz4, same block format) gives a page as
``bytes`` off the data path (save, listing, tests).
"""

from __future__ import annotations

import lz4.block

from xentmem.emulator._pagecodec import compress_page, decode_into

__all__ = ["compress_page", "decode_into", "decompress"]

decompress = lz4.block.decompress

"""The page codec of compressing clients: lz4 blocks (Xen used LZO1X; the ABI never shows which).

Compression goes through python-lz4. A GET decodes with the native ``_pagecodec`` straight into
the caller's frame: no intermediate ``bytes``, no second copy. It links Debian's liblz4, which
decodes a page about a quarter faster here than the copy python-lz4 builds in (same block format).
"""

from __future__ import annotations

import lz4.block

from xentmem.emulator._pagecodec import decode_into

__all__ = ["compress", "decode_into", "decompress"]

compress = lz4.block.compress
decompress = lz4.block.decompress

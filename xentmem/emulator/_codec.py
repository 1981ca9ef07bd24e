"""The page codec of compressing clients: LZO1X-1, byte for byte as Xen 4.5-4.12 compressed a page.

Xen's ``lzo1x_1_compress`` (``xen/common/lzo.c``, the 2012 Linux port of LZO 2.06) decides how many
bytes a compressed page takes, and so the client counter ``cb``: a page of one repeated byte takes
44 (ref §9.4). The data path is native (``_pagecodec``, our own LZO1X-1: Debian's liblzo2 hashes
into a larger dictionary than Xen's, so it writes other bytes for most text and code pages, and
decodes several times slower): a PUT compresses a page with one call and one ``bytes`` made, a
GET decodes straight into the caller's frame (no intermediate ``bytes``, no second copy).
``decompress_page`` gives a page as ``bytes`` off the data path (save, listing, snapshots).

Xen 4.0-4.4 used an older port (miniLZO 2.02) whose dictionary is not cleared between pages, so
its output depended on what the CPU compressed before; the emulator compresses as 4.5+ does for
every version.
"""

from __future__ import annotations

try:
    from xentmem.emulator._pagecodec import compress_page, decode_into, decompress_page
except ImportError as exc:  # a source tree nobody installed: say what to do
    raise ImportError("xentmem's page codec (xentmem/emulator/_pagecodec.c) is not built: run "
                      "scripts/bootstrap, or pip install -e . (needs gcc and python3-dev)") from exc

__all__ = ["compress_page", "decode_into", "decompress_page"]

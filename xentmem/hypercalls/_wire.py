"""The emulator daemon's wire protocol, declared once for both ends: the client
(:mod:`xentmem.hypercalls.socket`) and the daemon (:mod:`xentmem.emulator.daemon`).

Little endian; every message is ``u32 length`` + body::

    request  = u8 kind, u16 nfree, u32 nwrite, nfree x u64 address,
               nwrite x (u64 address, u32 size, size bytes), then by kind:
      HELLO    u32 protocol, u32 domid        (must come first; names the calling domain)
      ALLOC    u32 frames, u32 size, u8 buffer -> u64 address
      CALL     u32 op, u8 nargs, nargs x u64  -> i64 result, u32 nchanged,
                                                 nchanged x (u64 address, u32 size, bytes)
      CONTROL  JSON {"cmd": ..., ...}          -> JSON (host-API requests, dom0 only)
    reply    = u8 status (0 ok, 1 refused, 2 host crashed, 3 emulator error), then the result
               for 0, or a UTF-8 message.
"""

from __future__ import annotations

import struct

__all__ = [
    "ADDR",
    "ALLOC",
    "ALLOC_BODY",
    "CALL",
    "CALL_HEAD",
    "CALL_REPLY",
    "CHUNK",
    "CONTROL",
    "CRASHED",
    "EMULATOR",
    "FRAME",
    "HEAD",
    "HELLO",
    "HELLO_BODY",
    "MAX_FRAME",
    "OK",
    "PROTOCOL",
    "REFUSED",
    "SOCKET_BUFFER",
]

PROTOCOL = 1

FRAME = struct.Struct("<I")
MAX_FRAME = 64 << 20
SOCKET_BUFFER = 1 << 20  # a batch of 128 pages and its reply fit in one send each
HEAD = struct.Struct("<BHI")  # kind, nfree, nwrite
ADDR = struct.Struct("<Q")
CHUNK = struct.Struct("<QI")  # address, size (+ data)
HELLO_BODY = struct.Struct("<II")
ALLOC_BODY = struct.Struct("<IIB")
CALL_HEAD = struct.Struct("<IB")
CALL_REPLY = struct.Struct("<qI")
HELLO, ALLOC, CALL, CONTROL = 0, 1, 2, 3
OK, REFUSED, CRASHED, EMULATOR = 0, 1, 2, 3

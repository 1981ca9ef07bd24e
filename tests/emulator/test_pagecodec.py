"""The emulator's native page codec (``_pagecodec``): ``compress_page`` writes the LZO1X-1 stream
Xen 4.5-4.12 wrote for a 4 KiB page, byte for byte (so ``cb`` is a real host's);
``decode_into`` decodes exactly one page into a writable buffer, never writes outside it, and
refuses bad arguments with an exception instead of touching memory.

The golden sizes and digests are the output of Xen 4.12.4's ``lzo1x_1_compress``
(``xen/common/lzo.c``, the same compressor in 4.5.5), compiled with gcc for x86_64 with Xen's
``CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`` and run on the pages below. Debian's liblzo2 is the
second, independent reference. Its LZO1X-1 hashes into 16384 buckets where Xen's has 8192, so
the two agree exactly on pages whose distinct 4-byte words never share one of Xen's buckets
(``text``, ``records`` and ``symbols`` are pages where they do not: liblzo2 writes 2375, 2763 and
1298 bytes where Xen wrote 2385, 2776 and 1299). Its checked decoder judges every stream ours
decodes: the same verdict, the same page.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xentmem.abi import PAGE_SIZE
from xentmem.emulator._codec import compress_page, decode_into, decompress_page

from .driver import page as noise_page

LIBLZO2 = ctypes.CDLL("liblzo2.so.2")


def liblzo2_lzo1x_1(data: bytes) -> bytes:
    """Debian's liblzo2 ``lzo1x_1_compress`` of ``data`` (any length)."""
    out = ctypes.create_string_buffer(len(data) + len(data) // 16 + 67)
    size = ctypes.c_size_t(0)
    work = ctypes.create_string_buffer(1 << 17)  # LZO1X_1_MEM_COMPRESS is 64 KiB on LP64
    assert LIBLZO2.lzo1x_1_compress(data, ctypes.c_size_t(len(data)), out, ctypes.byref(size),
                                    work) == 0
    return out.raw[:size.value]


def liblzo2_lzo1x_999(data: bytes) -> bytes:
    """liblzo2's best (slow) LZO1X compressor: it also writes the 2-byte and 3-byte match codes
    (opcodes 0-15 after a match or a literal run) that LZO1X-1 never writes."""
    out = ctypes.create_string_buffer(len(data) + len(data) // 16 + 67)
    size = ctypes.c_size_t(0)
    work = ctypes.create_string_buffer(1 << 20)  # LZO1X_999_MEM_COMPRESS is 14 * 16384 * 8
    assert LIBLZO2.lzo1x_999_compress(data, ctypes.c_size_t(len(data)), out,
                                      ctypes.byref(size), work) == 0
    return out.raw[:size.value]


def liblzo2_page(packed: bytes) -> bytes | None:
    """liblzo2's ``lzo1x_decompress_safe`` verdict: the page, or None unless the stream is one
    whole page."""
    out = ctypes.create_string_buffer(PAGE_SIZE)
    size = ctypes.c_size_t(PAGE_SIZE)
    rc = LIBLZO2.lzo1x_decompress_safe(packed, ctypes.c_size_t(len(packed)), out,
                                       ctypes.byref(size), None)
    return out.raw if rc == 0 and size.value == PAGE_SIZE else None


def vocabulary_text(words: int) -> bytes:
    """Space-separated words drawn from a made-up vocabulary of ``words`` words."""
    h, vocab = hashlib.sha256(b"vocab").digest(), []
    while len(vocab) < words:
        h = hashlib.sha256(h).digest()
        vocab.append(bytes(97 + c % 26 for c in h[:2 + h[31] % 7]))
    out, seed = [], b"text"
    while sum(len(w) + 1 for w in out) < PAGE_SIZE:
        seed = hashlib.sha256(seed).digest()
        out += [vocab[int.from_bytes(seed[i:i + 2], "little") % words] for i in range(0, 32, 2)]
    return b" ".join(out)[:PAGE_SIZE]


PAGES = {
    "one byte": b"\xab" * PAGE_SIZE,
    "zeros": bytes(PAGE_SIZE),
    "small vocabulary": vocabulary_text(50),
    "text": vocabulary_text(200),
    "records": b"".join(struct.pack("<IHH", i, i % 100, 7) for i in range(512)),
    "symbols": b"".join(b"%016x T sym_%d\n" % (0xFFFFFFFF81000000 + i * 37, i % 97)
                        for i in range(200))[:PAGE_SIZE],
    "half zero": bytes(PAGE_SIZE // 2) + noise_page(2)[:PAGE_SIZE // 2],
    "noise": noise_page(1),  # no 4-byte word repeats: all literals, longer than the page
}
XEN = {  # name: (size, sha256) of Xen's lzo1x_1_compress output
    "one byte": (44, "e43607cf2a83e494a5cbcbee54755de31f9b03a762fbc1cfcda055f4defaeb5f"),
    "zeros": (44, "c25574e15665e2823c87fe2dd6d50efad2a3bbf0211c98317962474dc2d57d10"),
    "small vocabulary": (1636,
                         "85bae4a851ca7671db97348a69a21a5e5ee9e5792bb4758e90858392f2a2d95c"),
    "text": (2385, "75dc61209961fd3cac5111e3a536915b56e6774187de8b437a94f34fdecf0819"),
    "records": (2776, "b1b8e4812d431ad079c53cd920508d3dc1e8f3c717daaf3476b910e8087ff165"),
    "symbols": (1299, "52ed07b8b1a72d154e2820ea8e4a7cc7bce9631245d05377c524e21e936b0f69"),
    "half zero": (2077, "497c45e9a1cf59a2ff52798ad6cbdb26e34c64b1f9f2c86e3724e37090202af6"),
    "noise": (4116, "66f5cb637e6fd84ad94e7c3856429ca2dc36456bbba56d3832436cbaf0233f76"),
}


@pytest.mark.parametrize("name", PAGES)
def test_compress_page_writes_xens_bytes(name):
    packed = compress_page(PAGES[name])
    assert (len(packed), hashlib.sha256(packed).hexdigest()) == XEN[name]
    assert decompress_page(packed) == PAGES[name]


def test_one_repeated_byte_is_44_bytes_as_on_a_real_host():
    # ref §9.4 (cb:44): 5 literals (the first probe is at byte 5), a 4076-byte match 5 back
    # (an empty bucket names byte 0; length 33 + 15 * 255 + 0xda), 15 literals, the end mark
    assert compress_page(b"\xab" * PAGE_SIZE) == bytes.fromhex(
        "02" + "ab" * 5 + "20" + "00" * 15 + "da" + "1000" + "0c" + "ab" * 15 + "110000")


@pytest.mark.parametrize("name", ["one byte", "zeros", "small vocabulary", "half zero", "noise"])
def test_liblzo2_agrees_where_no_two_words_share_a_bucket(name):
    assert compress_page(PAGES[name]) == liblzo2_lzo1x_1(PAGES[name])


def _xen_buckets_collide(page: bytes) -> bool:
    words = {int.from_bytes(page[i:i + 4], "little") for i in range(PAGE_SIZE - 3)}
    return len({(w * 0x1824429D & 0xFFFFFFFF) >> 19 for w in words}) < len(words)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6),
       st.lists(st.integers(0, 5), min_size=1, max_size=400))
def test_pages_of_few_words_compress_as_liblzo2_does(words, picks):
    page = b"".join(words[i % len(words)] for i in picks)
    page = (page * (PAGE_SIZE // len(page) + 1))[:PAGE_SIZE]
    packed = compress_page(page)
    assert decompress_page(packed) == page
    if not _xen_buckets_collide(page):
        assert packed == liblzo2_lzo1x_1(page)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32),
       st.lists(st.tuples(st.integers(0, PAGE_SIZE - 1), st.integers(0, PAGE_SIZE - 1),
                          st.integers(1, 700)), max_size=12))
def test_any_page_round_trips(seed, copies):
    page = bytearray(noise_page(seed))
    for src, dst, n in copies:  # repeats at every distance and length
        chunk = page[src:src + n]
        page[dst:dst + len(chunk)] = chunk
    page = bytes(page[:PAGE_SIZE])
    packed = compress_page(page)
    assert len(packed) <= PAGE_SIZE + PAGE_SIZE // 16 + 67
    out = bytearray(b"\x33" * (3 * PAGE_SIZE))
    assert decode_into(packed, out, PAGE_SIZE) is True
    assert out[PAGE_SIZE:2 * PAGE_SIZE] == page
    assert out[:PAGE_SIZE] == out[2 * PAGE_SIZE:] == b"\x33" * PAGE_SIZE


@pytest.mark.parametrize("name", ["text", "zeros", "noise"])
def test_decodes_a_page_in_place(name):
    page = PAGES[name]
    packed = compress_page(memoryview(page))
    mem = mmap.mmap(-1, 3 * PAGE_SIZE)
    mem[:] = b"\x11" * (3 * PAGE_SIZE)
    assert decode_into(packed, mem, PAGE_SIZE) is True
    assert mem[PAGE_SIZE:2 * PAGE_SIZE] == page
    assert mem[:PAGE_SIZE] == mem[2 * PAGE_SIZE:] == b"\x11" * PAGE_SIZE


TEXT_PACKED = compress_page(PAGES["text"])
CORRUPT = {
    "truncated": TEXT_PACKED[:-6],
    "no end mark": TEXT_PACKED[:-3],
    "trailing bytes": TEXT_PACKED + b"\x00",
    "short": bytes([17 + 5]) + b"hello" + b"\x11\x00\x00",  # a valid stream of 5 bytes
    "long": liblzo2_lzo1x_1(PAGES["text"] * 2),  # a valid stream of two pages
    "before the start": bytes([17 + 4]) + b"abcd" + bytes([0x60 | 3 << 2, 12]) + b"\x11\x00\x00",
    "empty": b"",
    "garbage": hashlib.sha256(b"garbage").digest() * 10,
}


@pytest.mark.parametrize("packed", CORRUPT.values(), ids=CORRUPT.keys())
def test_anything_but_one_whole_page_is_false_and_stays_inside(packed):
    out = bytearray(b"\x22" * (3 * PAGE_SIZE))
    assert decode_into(packed, out, PAGE_SIZE) is False
    assert out[:PAGE_SIZE] == out[2 * PAGE_SIZE:] == b"\x22" * PAGE_SIZE
    with pytest.raises(ValueError, match="not an LZO1X stream of one 4096-byte page"):
        decompress_page(packed)


@pytest.mark.parametrize("name", PAGES)
def test_decodes_what_liblzo2s_best_compressor_writes(name):
    packed = liblzo2_lzo1x_999(PAGES[name])
    assert decompress_page(packed) == PAGES[name] == liblzo2_page(packed)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(PAGES)), st.booleans(), st.data())
def test_a_damaged_stream_is_judged_as_liblzo2_does_and_stays_inside(name, best, data):
    packed = bytearray((liblzo2_lzo1x_999 if best else compress_page)(PAGES[name]))
    for _ in range(data.draw(st.integers(0, 4))):
        packed[data.draw(st.integers(0, len(packed) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(packed)))
    damaged = bytes(packed[:cut]) + data.draw(st.binary(max_size=3))
    out = bytearray(b"\x44" * (3 * PAGE_SIZE))
    want = liblzo2_page(damaged)
    assert decode_into(damaged, out, PAGE_SIZE) is (want is not None)
    assert out[:PAGE_SIZE] == out[2 * PAGE_SIZE:] == b"\x44" * PAGE_SIZE
    if want is not None:
        assert out[PAGE_SIZE:2 * PAGE_SIZE] == want


@pytest.mark.parametrize(("args", "error"), [
    ((b"x", bytearray(PAGE_SIZE), 1), ValueError),  # the page would run past the end
    ((b"x", bytearray(PAGE_SIZE), -1), ValueError),
    ((b"x", bytearray(PAGE_SIZE - 1), 0), ValueError),
    ((b"x", bytearray(PAGE_SIZE), 2**70), OverflowError),
    ((b"x", bytes(PAGE_SIZE), 0), BufferError),  # read-only memory
    ((bytearray(b"x"), bytearray(PAGE_SIZE), 0), TypeError),  # only bytes are decoded
    ((b"x", bytearray(PAGE_SIZE)), TypeError),
], ids=["past end", "negative", "small buffer", "huge offset", "read-only", "not bytes",
        "two args"])
def test_bad_arguments_raise_and_write_nothing(args, error):
    before = bytes(args[1]) if len(args) > 1 else b""
    with pytest.raises(error):
        decode_into(*args)
    assert len(args) < 2 or bytes(args[1]) == before


@pytest.mark.parametrize(("page", "error"), [
    (bytes(PAGE_SIZE - 1), ValueError), (bytes(PAGE_SIZE + 1), ValueError), (b"", ValueError),
    ("a str", TypeError), (4096, TypeError)])
def test_compress_page_takes_exactly_one_page(page, error):
    with pytest.raises(error):
        compress_page(page)


def test_decompress_page_takes_bytes():
    with pytest.raises(TypeError):
        decompress_page(bytearray(TEXT_PACKED))

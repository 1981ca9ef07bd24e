"""The emulator's native page codec (``_pagecodec``): ``compress_page`` makes the lz4 block of one
4 KiB page (python-lz4 reads it back); ``decode_into`` decodes exactly one page into a writable
buffer, never writes outside it, and refuses bad arguments with an exception instead of touching
memory."""

from __future__ import annotations

import mmap
import os

import lz4.block
import pytest

from xentmem.abi import PAGE_SIZE
from xentmem.emulator._codec import compress_page, decode_into

TEXT = (b"a line of a text file, more or less; " * 120)[:PAGE_SIZE]


@pytest.mark.parametrize("page", [TEXT, bytes(PAGE_SIZE), os.urandom(PAGE_SIZE)],
                         ids=["text", "zeros", "random"])
def test_decodes_a_page_in_place(page):
    packed = compress_page(memoryview(page))
    mem = mmap.mmap(-1, 3 * PAGE_SIZE)
    mem[:] = b"\x11" * (3 * PAGE_SIZE)
    assert decode_into(packed, mem, PAGE_SIZE) is True
    assert mem[PAGE_SIZE:2 * PAGE_SIZE] == page
    assert mem[:PAGE_SIZE] == mem[2 * PAGE_SIZE:] == b"\x11" * PAGE_SIZE
    assert lz4.block.decompress(packed, uncompressed_size=PAGE_SIZE) == page  # same format


@pytest.mark.parametrize("packed", [
    compress_page(TEXT)[:-6],  # truncated
    lz4.block.compress(TEXT[:100], store_size=False),  # a valid block, but not a page long
    lz4.block.compress(TEXT + TEXT, store_size=False),  # longer than a page
    b"",
    os.urandom(300),
], ids=["truncated", "short", "long", "empty", "garbage"])
def test_anything_but_one_whole_page_is_false_and_stays_inside(packed):
    out = bytearray(b"\x22" * (3 * PAGE_SIZE))
    assert decode_into(packed, out, PAGE_SIZE) is False
    assert out[:PAGE_SIZE] == out[2 * PAGE_SIZE:] == b"\x22" * PAGE_SIZE


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


def test_compress_page_is_python_lz4s_block_format():
    assert len(compress_page(TEXT)) < 200 and len(compress_page(bytes(PAGE_SIZE))) < 40
    noise = os.urandom(PAGE_SIZE)
    assert len(compress_page(noise)) > PAGE_SIZE  # it does not pay; _tmem stores it raw
    for page in (TEXT, noise):
        assert lz4.block.decompress(compress_page(bytearray(page)),
                                    uncompressed_size=PAGE_SIZE) == page


@pytest.mark.parametrize(("page", "error"), [
    (bytes(PAGE_SIZE - 1), ValueError), (bytes(PAGE_SIZE + 1), ValueError), (b"", ValueError),
    ("a str", TypeError), (4096, TypeError)])
def test_compress_page_takes_exactly_one_page(page, error):
    with pytest.raises(error):
        compress_page(page)

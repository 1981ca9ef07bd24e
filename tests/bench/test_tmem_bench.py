"""The tmem data-path benchmark as a pytest run (``pytest -m bench tests/bench -s``): prints
the table of ``xentmem bench tmem``; figures are reported, not asserted."""

from __future__ import annotations

import pytest

from xentmem.emulator import bench_tmem


@pytest.mark.bench
def test_tmem_data_path_benchmark():
    result = bench_tmem(20000)
    for row in result.rows:
        print(f"{row.scenario:30} {row.mode:8} {row.op:9} {row.pages_per_s:9.0f} pages/s "
              f"dict {row.dict_pages_per_s:9.0f}  ratio {row.ratio:5.2f}  "
              f"{row.gb_per_s:5.2f} GB/s  hits {row.hits}")
    print(f"resident memory per stored page: {result.resident_bytes_per_page:.0f} bytes, "
          f"{result.resident_bytes_per_compressed_page:.0f} compressed")
    print(f"LZO1X-1 alone: {result.lzo_compress_pages_s:.0f} compressions/s, "
          f"{result.lzo_decompress_pages_s:.0f} decompressions/s")
    assert all(row.hits > 0 for row in result.rows)

"""The pytest11 plugin, run the way another project would use it: a separate pytest process on
a test file that only uses the fixtures (the README example)."""

from __future__ import annotations

import subprocess
import sys

from tests.test_readme import readme_blocks

# the README's own plugin example, as another project would paste it
README_EXAMPLE = next(b for b in readme_blocks("## Library") if "xentmem_daemon" in b)
EXTRA = '''
def test_tmem_client(xentmem_tmem):
    pool = xentmem_tmem.new_pool(persistent=True)
    xentmem_tmem.put_page(pool, (1, 0, 0), 0, b"x" * 4096)
    assert xentmem_tmem.get_page(pool, (1, 0, 0), 0) == b"x" * 4096

def test_lost_page_fails_at_teardown(xentmem_guest):
    guest = xentmem_guest("broken", memory_mb=32, backend=None)
    guest.swap_info[0].store.write = lambda offset, data: None  # a disk that drops writes
    guest.alloc_anon(8000)
    guest.balance()

def test_a_living_machine(xentmem_machine):
    from xentmem.emulator.machine import living_guest
    guest = xentmem_machine.add_guest(living_guest("db", workload="db"))
    xentmem_machine.advance(40.0)
    assert guest.report()["tmem_pages"] > 0
'''


def test_plugin_fixtures_work_and_teardown_catches_lost_pages(tmp_path):
    (tmp_path / "test_example.py").write_text(README_EXAMPLE + EXTRA + """
def test_xen_version_option(xentmem_host):
    assert str(xentmem_host.version) == "4.4"
""")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-o", "addopts=", "--xentmem-xen-version", "4.4", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert "6 passed, 1 error" in proc.stdout, proc.stdout + proc.stderr
    assert "xentmem: pages came back wrong: broken:" in proc.stdout

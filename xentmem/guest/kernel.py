"""Which Linux a guest runs, as far as tmem and ballooning care (ref linux-tmem-frontends §8).

=============  ==================================================================================
kernel         what it has
=============  ==================================================================================
3.10 - 5.2     the Xen tmem driver (frontswap + cleancache backend), the self-balloon driver and
               its sysfs knobs, frontswap and cleancache debugfs counters, the balloon driver
5.3 - 5.16     "xen: remove tmem driver" (5.3): no tmem, no self-balloon driver; frontswap and
               cleancache remain for other backends; the balloon driver
5.17 - 6.5     cleancache removed (5.17); frontswap remains
6.6 and later  frontswap removed (6.6): the balloon driver only
=============  ==================================================================================

Older kernels (before 3.10, the seed's base) are not modelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xentmem.errors import GuestError

__all__ = ["DEFAULT_KERNEL", "Kernel"]

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")
_RELEASE = re.compile(r"(\d{1,4})\.(\d{1,4})\b")
_OLDEST = (3, 10)
_NO_TMEM, _NO_CLEANCACHE, _NO_FRONTSWAP = (5, 3), (5, 17), (6, 6)


@dataclass(frozen=True)
class Kernel:
    """A kernel release ``major.minor``; ``Kernel.parse("6.1")``."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str | Kernel) -> Kernel:
        """``"3.10"``, ``"5.2.21"`` or ``"6.1"``; ``GuestError`` names what is wrong."""
        if isinstance(text, Kernel):
            return text
        match = _VERSION.fullmatch(str(text).strip())
        if match is None:
            raise GuestError(f"kernel {text!r}: expected a version like 4.19 or 6.1")
        kernel = cls(int(match[1]), int(match[2]))
        if kernel.release < _OLDEST:
            raise GuestError(f"kernel {text}: kernels before 3.10 are not modelled")
        return kernel

    @classmethod
    def from_release(cls, untrusted: str) -> Kernel | None:
        """The kernel ``uname -r`` names (``6.1.0-13-amd64``), or None if it names none."""
        match = _RELEASE.match(untrusted.strip())
        if match is None:
            return None
        kernel = cls(int(match[1]), int(match[2]))
        return kernel if kernel.release >= _OLDEST else None

    @property
    def release(self) -> tuple[int, int]:
        return (self.major, self.minor)

    @property
    def has_tmem(self) -> bool:
        """The Xen tmem driver (``drivers/xen/tmem.c``)."""
        return self.release < _NO_TMEM

    @property
    def has_selfballoon(self) -> bool:
        """The self-balloon driver (``drivers/xen/xen-selfballoon.c``) and its sysfs knobs."""
        return self.release < _NO_TMEM

    @property
    def has_cleancache(self) -> bool:
        return self.release < _NO_CLEANCACHE

    @property
    def has_frontswap(self) -> bool:
        return self.release < _NO_FRONTSWAP

    def missing(self, feature: str) -> str:
        """Why this kernel cannot do ``feature`` (one line, for a refusal)."""
        removed = {"tmem": "5.3", "selfballoon": "5.3", "cleancache": "5.17",
                   "frontswap": "6.6"}[feature]
        return f"Linux {self} has no {feature} (removed in {removed})"

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


DEFAULT_KERNEL = Kernel(3, 10)

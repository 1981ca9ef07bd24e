"""xentmem: Xen transcendent memory (tmem) and self-ballooning toolkit."""

__version__ = "0.1.0"

"""fieldlab/memory.py: the long-running commands fix glibc's mmap threshold (the soak's RSS creep)."""
import sys

from fieldlab.memory import steady_malloc


def test_the_mmap_threshold_is_fixed_on_glibc():
    if sys.platform.startswith("linux"):  # the machines fieldlab runs on (Debian, Raspberry Pi OS): glibc
        assert steady_malloc() is True

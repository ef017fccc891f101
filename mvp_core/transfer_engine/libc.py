"""The C library, loaded once: the few calls Python does not wrap (renameat2 with
RENAME_NOREPLACE, syncfs, prctl(PR_SET_PDEATHSIG)). None where there is no libc to find."""

from __future__ import annotations

import ctypes
import ctypes.util

_name = ctypes.util.find_library("c")
LIBC: ctypes.CDLL | None = ctypes.CDLL(_name, use_errno=True) if _name else None

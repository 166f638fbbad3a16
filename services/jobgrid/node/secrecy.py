"""Keeping the node's credentials away from the processes beside it (its jobs above all).

Once the settings hold the credentials, `protect_credentials` removes their variables from the environment
(os.environ, and the bytes of the process's initial environment block that /proc/<pid>/environ shows) and
makes the process non-dumpable (prctl PR_SET_DUMPABLE 0): /proc/<pid>/environ, mem, fd/ and ptrace are
then closed to other processes of the same user. Job processes get an allow-listed environment
(pool.PASSED_ENV) and no inherited descriptors; `--job-user` runs them as another account, which also
keeps them from reading the token files (mode 0600).
"""

from __future__ import annotations

import ctypes
import os

CREDENTIAL_VARS = ("JOBGRID_TOKEN", "JOBGRID_READ_TOKEN", "JOBGRID_PEER_SECRET")
_PR_SET_DUMPABLE = 4


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def scrub_initial_environment(names: tuple[str, ...] = CREDENTIAL_VARS) -> int:
    """Overwrite the values of `names` in the C environment block (what /proc/<pid>/environ reads), then
    unset them. Returns how many were found."""
    libc = _libc()
    found = 0
    if libc is not None:
        try:
            environ = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
        except ValueError:
            environ = None
        i = 0
        while environ and environ[i]:
            addr = environ[i]
            entry = ctypes.string_at(addr)
            key = entry.split(b"=", 1)[0].decode(errors="replace")
            if key in names:
                ctypes.memset(addr + len(key) + 1, ord("x"), len(entry) - len(key) - 1)
                found += 1
            i += 1
    for n in names:
        os.environ.pop(n, None)
    return found


def undumpable() -> bool:
    libc = _libc()
    if libc is None or not hasattr(libc, "prctl"):
        return False
    return libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0


def protect_credentials() -> None:
    scrub_initial_environment()
    undumpable()

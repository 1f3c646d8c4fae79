"""How long idle OpenMP threads spin before they sleep: shortened by the CLI before torch loads.

torch's CPU operators run on GNU OpenMP's threads; NNPACK (the encoder's Winograd
convolutions) runs on a thread pool of its own. After each parallel region, GNU OpenMP's
idle threads spin for 300,000 iterations by default (milliseconds) before they sleep, and
an NNPACK call made meanwhile shares the cores with them. Measured on 2 cores, 14 Winograd
bands: 145-150 ms alone, 236 ms each right after OpenMP work, 160 ms with a spin count of
30,000. libgomp reads ``GOMP_SPINCOUNT`` once, when it loads (with torch), so the ``naf``
command sets it first thing; the library does not change the environment of a program
that imports it. The variable is inherited by child processes (decoding workers, bench
rows), and it applies to all of torch's OpenMP work, not only NAF's. Other OpenMP
runtimes (LLVM's libomp, Intel's libiomp5) do not read it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SPIN_COUNT = "30000"
_OWN_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")

# what shorten_spin found, for `naf env` (a program that never called it: see describe())
outcome = ""


def _libgomp_loaded() -> bool:
    """GNU OpenMP is already mapped into this process (Linux; False where unknown)."""
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def shorten_spin() -> str:
    """Set ``GOMP_SPINCOUNT`` unless the environment has a wait policy already or libgomp
    (torch) is loaded; returns (and keeps in ``outcome``) what was done."""
    global outcome
    own = [name for name in _OWN_SETTINGS if name in os.environ]
    if own:
        outcome = "kept from the environment: " + ", ".join(f"{name}={os.environ[name]}" for name in own)
    elif "torch" in sys.modules or _libgomp_loaded():
        outcome = describe()
    else:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
        outcome = f"GOMP_SPINCOUNT={SPIN_COUNT} (set by naf-cli before torch loaded)"
    return outcome


def describe() -> str:
    """The setting in effect, as far as this process can tell."""
    if outcome:
        return outcome
    own = [f"{name}={os.environ[name]}" for name in _OWN_SETTINGS if name in os.environ]
    if own:
        return "from the environment: " + ", ".join(own)
    return (f"GNU OpenMP's default (set GOMP_SPINCOUNT={SPIN_COUNT} before starting Python for faster "
            "Winograd convolutions; the naf command does)")

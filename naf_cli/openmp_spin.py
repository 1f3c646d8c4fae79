"""How long idle OpenMP threads spin before they sleep: shortened before torch loads.

torch's CPU operators run on GNU OpenMP's threads; NNPACK (the encoder's Winograd
convolutions) runs on a thread pool of its own. After each parallel region, GNU OpenMP's
idle threads spin for 300,000 iterations by default (milliseconds) before they sleep, and
an NNPACK call made meanwhile shares the cores with them. Measured on 2 cores, 14 Winograd
bands: 147 ms alone, 236 ms each right after OpenMP work, 160 ms with a spin count of 30,000.
libgomp reads ``GOMP_SPINCOUNT`` once, when torch loads, so this runs on ``import naf_cli``,
before anything imports torch; a setting of the user's own is kept.
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = "30000"
_USERS_OWN = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")

# what shorten_spin found, for `naf env`
outcome = "not run"


def shorten_spin() -> str:
    """Set ``GOMP_SPINCOUNT`` unless the user set the wait policy or torch is already loaded;
    returns (and keeps in ``outcome``) what was done."""
    global outcome
    own = [name for name in _USERS_OWN if name in os.environ]
    if own:
        outcome = "kept the user's " + ", ".join(f"{name}={os.environ[name]}" for name in own)
    elif "torch" in sys.modules:
        outcome = (f"default (torch was imported before naf_cli; set GOMP_SPINCOUNT={SPIN_COUNT} "
                   "in the environment, or import naf_cli first, for faster Winograd convolutions)")
    else:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
        outcome = f"GOMP_SPINCOUNT={SPIN_COUNT} (set by naf-cli before torch loaded)"
    return outcome

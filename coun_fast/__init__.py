"""coun_fast: fast contrastive machine unlearning.

Fused contrastive losses (``coun_fast.functional``, ``coun_fast.losses``) on CPU and CUDA, exact
against their formulas and never materializing the M x M similarity matrix; ``coun_fast.info()``
says what this installation can do.
"""

import os as _os
import sys as _sys

from coun_fast.threads import OMP_ENV as _OMP_ENV

if "torch" not in _sys.modules:  # OpenMP reads its settings when torch loads it (see coun_fast.threads)
    for _name, _value in _OMP_ENV.items():
        _os.environ.setdefault(_name, _value)

from coun_fast import functional, losses  # noqa: E402
from coun_fast._version import __version__
from coun_fast.capabilities import info

__all__ = ["functional", "losses", "info", "__version__"]

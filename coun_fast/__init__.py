"""coun_fast: fast contrastive machine unlearning.

Fused contrastive losses (``coun_fast.functional``, ``coun_fast.losses``) on CPU and CUDA, exact
against their formulas and never materializing the M x M similarity matrix; ``coun_fast.info()``
says what this installation can do.
"""

from coun_fast import functional, losses
from coun_fast._version import __version__
from coun_fast.capabilities import info

__all__ = ["functional", "losses", "info", "__version__"]

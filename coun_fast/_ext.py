"""Loads the compiled extension ``coun_fast._C`` once.

``C`` is the module, or None when it could not be loaded; ``LOAD_ERROR`` then says why. A missing
extension is announced by one warning at import; every fused call that cannot run says why too.
"""

from __future__ import annotations

import warnings
from types import ModuleType

C: ModuleType | None
LOAD_ERROR: str | None

try:
    from coun_fast import _C as C

    LOAD_ERROR = None
except ImportError as error:  # pragma: no cover - depends on the installation
    C = None
    LOAD_ERROR = f"{type(error).__name__}: {error}"
    warnings.warn(
        "coun_fast: the compiled extension coun_fast._C could not be loaded "
        f"({LOAD_ERROR}); fused kernels are unavailable and backend='auto' uses the "
        "pure-PyTorch reference. Reinstall with `pip install .` to build it.",
        RuntimeWarning,
        stacklevel=2,
    )

CUDA_COMPILED: bool = bool(C is not None and C.CUDA_COMPILED)
CUDA_ARCHS: list[str] = [a for a in (C.CUDA_ARCHS.split(",") if C is not None else []) if a]

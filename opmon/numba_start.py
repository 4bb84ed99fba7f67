"""Start numba for cached kernels: without scipy's BLAS, and without its compiler's registries.

When numba first loads a compiled (even disk-cached) function it imports its array-math
registry, which checks whether numba's `np.dot`/`@`/`np.linalg` can work by importing
`scipy.linalg.cython_blas`, and with it all of `scipy.linalg` (~0.3 s warm, more on a loaded
machine): about as long as `opmon process` spends decoding a 17,000-frame map. opmon's
kernels never use numba's BLAS-backed functions (processors/kernels.py writes its 3x3
products by hand), so a command that only runs opmon's kernels can let numba record "no
BLAS" instead. scipy stays importable for everything else afterwards.

Loading a kernel from numba's disk cache also begins with `target_context.refresh()`, which
imports and installs every typing and lowering registry numba has (random generators, typed
containers, jitclass, datetime, polynomials...): what *compiling* needs, ~0.1-0.15 s of CPU that
a run of cached kernels does not. `load_cached_kernels_without_refresh` makes a cache hit
initialise only the runtime (NRT: kernels that allocate call it) and leaves the full refresh to
the first cache miss, which then compiles exactly as before (array math imported without BLAS
then: a run that only loads needs neither, ~0.07 s more). Same machine code either way: the
maps are bit-identical.
"""
from __future__ import annotations

import sys

BLAS_MODULE = "scipy.linalg.cython_blas"


def import_numba_without_blas() -> None:
    """Import numba's array-math registry with scipy's BLAS hidden; a no-op once it is imported."""
    if "numba.np.arraymath" in sys.modules:
        return
    hidden = BLAS_MODULE not in sys.modules
    if hidden:
        sys.modules[BLAS_MODULE] = None  # type: ignore[assignment]  # makes `import` raise ImportError
    try:
        import numba.np.arraymath  # noqa: F401  (numba's registry, loaded now with "no BLAS")
    finally:
        if hidden:
            del sys.modules[BLAS_MODULE]


_LIGHT = "_opmon_loads_without_refresh"


def load_cached_kernels_without_refresh() -> bool:
    """Make numba load disk-cached kernels without refreshing its compiler registries (module doc);
    False (and numba left as it is) when its cache internals are not the ones this was written
    for (numba 0.60-0.68: `Cache.load_overload` / `_load_overload`, `rtsys.initialize`)."""
    from numba.core import caching
    from numba.core.runtime import rtsys

    cache = caching.Cache
    full = cache.load_overload
    if getattr(full, _LIGHT, False):
        return True
    if not (hasattr(cache, "_load_overload") and hasattr(cache, "_guard_against_spurious_io_errors")
            and callable(getattr(rtsys, "initialize", None))):
        return False

    def load_overload(self: caching.Cache, sig: object, target_context: object) -> object:
        rtsys.initialize(target_context)   # what refresh() does first: the runtime a kernel calls into
        loaded = None
        with self._guard_against_spurious_io_errors():
            loaded = self._load_overload(sig, target_context)
        if loaded is not None:
            return loaded
        import_numba_without_blas()   # a miss: refresh and compile as numba does, its array math without BLAS
        return full(self, sig, target_context)

    setattr(load_overload, _LIGHT, True)
    cache.load_overload = load_overload  # type: ignore[method-assign]
    return True

"""How the codec reads its input: netCDF files without a chunk cache.

netCDF-C gives every variable of every open file a chunk cache (64 MB by
default). The codec reads each field once, so the cache holds nothing worth
keeping, yet a process's resident memory grows by up to 64 MB a variable as
the cache fills: a file of many variables would take a dask worker's whole
memory limit. Every process that reads for the codec turns it off: this one
for the duration of a call (``no_chunk_cache``), worker processes for good
(``cache_no_chunks``, run once in each).
"""

from contextlib import contextmanager

import netCDF4


def cache_no_chunks():
    """Turn off netCDF's chunk cache for the files this process opens from now on; return the settings it had."""
    before = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(0, 0, 0.0)
    return before


@contextmanager
def no_chunk_cache():
    """netCDF files opened in the block cache no chunks; the process's settings come back after it."""
    before = cache_no_chunks()
    try:
        yield
    finally:
        netCDF4.set_chunk_cache(*before)

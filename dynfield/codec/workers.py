"""What every dask worker that compresses with dynfield sets up once (``reading``: no netCDF chunk cache).

A worker plugin, registered with the client, runs on every worker present
and future before any of the codec's tasks opens a file there.
"""

from distributed import WorkerPlugin

from .reading import cache_no_chunks

NAME = "dynfield-reading"


class Reading(WorkerPlugin):
    def setup(self, worker):
        cache_no_chunks()


def prepare(client):
    """Register the plugin with `client` (registering it again replaces it: no harm in calling this twice)."""
    client.register_plugin(Reading(), name=NAME)

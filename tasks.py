"""invoke's manifest: each concern's Collection under its public name. Code lives in sglkit/."""

from invoke import Collection

from sglkit.cache.tasks import ns as cache
from sglkit.containers.tasks import ns as container
from sglkit.host.tasks import ns as host
from sglkit.kernels.tasks import ns as kernels
from sglkit.observability.tasks import ns as obs
from sglkit.profile.tasks import ns as profile
from sglkit.server.tasks import ns as server

ns = Collection(host, container, obs, cache, kernels, profile, server)

# A whole local cluster in one process, for a quick look:
#   twistd -ny examples/cluster.tac
# A proxy on 127.0.0.1:7000 and three storage servers with data under ./var.
# (Real deployments run one process per device: see `make run`.)
import os

from twisted.application import service
from twisted.internet import endpoints, reactor

from deposito.proxy import ProxyService
from deposito.storage import StorageService

var = os.path.abspath(os.environ.get("DEPOSITO_VAR", "./var"))
application = service.Application("deposito-cluster")
ProxyService(
    reactor, os.path.join(var, "proxy"),
    endpoints.serverFromString(reactor, "tcp:7000:interface=127.0.0.1"),
    endpoints.serverFromString(reactor, "tcp:7001:interface=127.0.0.1"),
    2,
).setServiceParent(application)
for i in (1, 2, 3):
    StorageService(
        reactor, os.path.join(var, f"server{i}"),
        endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1"),
        endpoints.clientFromString(reactor, "tcp:127.0.0.1:7001"),
        f"server{i}", f"zone{i}", None,
    ).setServiceParent(application)

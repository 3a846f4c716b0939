# A Deposito proxy as a .tac file:  twistd -ny examples/proxy.tac
# Settings come from the environment, with the plugin's defaults: DEPOSITO_PROXY_DATA,
# DEPOSITO_PROXY_PORT, DEPOSITO_PROXY_CLUSTER_PORT, DEPOSITO_PROXY_REPLICAS.
import os

from twisted.application import service
from twisted.internet import endpoints, reactor

from deposito.proxy import ProxyService

# the names these settings had before (DEPOSITO_PROXY is the CLI's: the proxies' client ports)
RENAMED = {
    "DEPOSITO_DATA": "DEPOSITO_PROXY_DATA",
    "DEPOSITO_PORT": "DEPOSITO_PROXY_PORT",
    "DEPOSITO_CLUSTER_PORT": "DEPOSITO_PROXY_CLUSTER_PORT",
    "DEPOSITO_REPLICAS": "DEPOSITO_PROXY_REPLICAS",
}
for old, new in RENAMED.items():
    if old in os.environ:
        raise SystemExit(f"{old} is now {new}: rename it (nothing was started)")

application = service.Application("deposito-proxy")
ProxyService(
    reactor,
    os.path.abspath(os.environ.get("DEPOSITO_PROXY_DATA", "./deposito-proxy")),
    endpoints.serverFromString(reactor, os.environ.get("DEPOSITO_PROXY_PORT", "tcp:7000:interface=127.0.0.1")),
    endpoints.serverFromString(reactor, os.environ.get("DEPOSITO_PROXY_CLUSTER_PORT", "tcp:7001:interface=127.0.0.1")),
    int(os.environ.get("DEPOSITO_PROXY_REPLICAS", "2")),
).setServiceParent(application)

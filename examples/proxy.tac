# A Deposito proxy as a .tac file:  twistd -ny examples/proxy.tac
# Settings come from the environment, with the plugin's defaults.
import os

from twisted.application import service
from twisted.internet import endpoints, reactor

from deposito.proxy import ProxyService

application = service.Application("deposito-proxy")
ProxyService(
    reactor,
    os.path.abspath(os.environ.get("DEPOSITO_PROXY_DATA", "./deposito-proxy")),
    endpoints.serverFromString(reactor, os.environ.get("DEPOSITO_PROXY_PORT", "tcp:7000:interface=127.0.0.1")),
    endpoints.serverFromString(reactor, os.environ.get("DEPOSITO_PROXY_CLUSTER_PORT", "tcp:7001:interface=127.0.0.1")),
    int(os.environ.get("DEPOSITO_PROXY_REPLICAS", "2")),
).setServiceParent(application)

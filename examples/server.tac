# A Deposito storage server as a .tac file:
#   DEPOSITO_SERVER_NAME=s1 DEPOSITO_SERVER_DATA=./s1 twistd -ny examples/server.tac --pidfile s1.pid
#   (DEPOSITO_SERVER_JOINS: the proxies' cluster ports, as endpoint strings space apart;
#   the CLI's $DEPOSITO_PROXY names their client ports, a different thing)
import os

from twisted.application import service
from twisted.internet import endpoints, reactor

from deposito.storage import StorageService

# the names these settings had before (DEPOSITO_PROXY is the CLI's: the proxies' client ports)
RENAMED = {
    "DEPOSITO_DATA": "DEPOSITO_SERVER_DATA",
    "DEPOSITO_PORT": "DEPOSITO_SERVER_PORT",
    "DEPOSITO_NAME": "DEPOSITO_SERVER_NAME",
    "DEPOSITO_ZONE": "DEPOSITO_SERVER_ZONE",
}
for old, new in RENAMED.items():
    if old in os.environ:
        raise SystemExit(f"{old} is now {new}: rename it (nothing was started)")

application = service.Application("deposito-server")
StorageService(
    reactor,
    os.path.abspath(os.environ.get("DEPOSITO_SERVER_DATA", "./deposito-server")),
    endpoints.serverFromString(reactor, os.environ.get("DEPOSITO_SERVER_PORT", "tcp:0:interface=127.0.0.1")),
    [endpoints.clientFromString(reactor, proxy)  # one or more, space apart: it joins each
     for proxy in os.environ.get("DEPOSITO_SERVER_JOINS", "tcp:127.0.0.1:7001").split()],
    os.environ.get("DEPOSITO_SERVER_NAME"),
    os.environ.get("DEPOSITO_SERVER_ZONE"),
    None,
).setServiceParent(application)

# A Deposito storage server as a .tac file:
#   DEPOSITO_SERVER_NAME=s1 DEPOSITO_SERVER_DATA=./s1 twistd -ny examples/server.tac --pidfile s1.pid
#   (DEPOSITO_SERVER_JOINS: the proxies' cluster ports, as endpoint strings space apart;
#   the CLI's $DEPOSITO_PROXY names their client ports, a different thing)
import os

from twisted.application import service
from twisted.internet import endpoints, reactor

from deposito.storage import StorageService

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

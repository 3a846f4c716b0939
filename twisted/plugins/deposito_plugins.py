from twisted.application.service import ServiceMaker

deposito_proxy = ServiceMaker(
    "Deposito proxy", "deposito.proxy_tap", "The Deposito proxy: catalog and client port.", "deposito-proxy"
)
deposito_server = ServiceMaker(
    "Deposito storage server", "deposito.server_tap", "A Deposito storage server (one device).", "deposito-server"
)

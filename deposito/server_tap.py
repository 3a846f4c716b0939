"""``twistd deposito-server``: options and service wiring for a storage server."""

from __future__ import annotations


from twisted.internet import endpoints
from twisted.python import usage

from deposito.options import FirstLineOptions, check_endpoint, data_directory, parse_bytes, parse_seconds, read_secret
from deposito.protocols.cluster import SERVER_ID

DEFAULT_PROXY = "tcp:127.0.0.1:7001"


class Options(FirstLineOptions):
    command = "deposito-server"
    synopsis = ("[--proxy EP]... [--port EP] [--data DIR] [--name ID] [--zone Z] [--capacity BYTES]"
                " [--scrub-every SECONDS] [--secret FILE] [--no-handoff]")
    longdesc = ("A Deposito storage server: one device. It joins the proxy at each --proxy (the "
                "option may be given several times), serves blobs on --port and keeps them under --data.")
    optParameters = [
        ["port", None, "tcp:0", "endpoint for blob traffic (tcp:0: any free port, advertised)"],
        ["data", None, "./deposito-server", "directory for the blobs (one server = one device)"],
        ["name", None, None, "stable server id (default: made once and kept in --data)"],
        ["zone", None, None, "failure domain (default: the host name)"],
        ["capacity", None, None, "the most bytes to hold, e.g. 10G (default: the disk's free space)"],
        ["scrub-every", None, "86400", "seconds between re-reads of every blob against its checksums"],
        ["secret", None, None, "file holding the cluster secret (the proxy's --secret)"],
    ]
    optFlags = [
        ["no-handoff", None, "send every byte read through the proxy, even when it runs on this host"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["proxy"] = []

    def opt_proxy(self, endpoint: str) -> None:
        """client endpoint of a proxy's cluster port, once per proxy [default: tcp:127.0.0.1:7001]"""
        from twisted.internet import reactor

        check_endpoint("--proxy", endpoint, lambda v: endpoints.clientFromString(reactor, v), client=True)
        if endpoint in self["proxy"]:
            raise usage.UsageError(f"--proxy {endpoint} is named twice")
        self["proxy"].append(endpoint)

    def postOptions(self) -> None:
        from twisted.internet import reactor

        if not self["proxy"]:
            self["proxy"] = [DEFAULT_PROXY]
        check_endpoint("--port", self["port"], lambda v: endpoints.serverFromString(reactor, v))
        for option in ("name", "zone"):
            if self[option] is not None and not SERVER_ID.match(self[option]):
                raise usage.UsageError(f"--{option} must be 1 to 64 of A-Z a-z 0-9 . _ : -")
        if self["capacity"] is not None:
            self["capacity"] = parse_bytes("--capacity", self["capacity"])
        self["scrub-every"] = parse_seconds("--scrub-every", self["scrub-every"])
        if self["secret"] is not None:
            self["secret"] = read_secret("--secret", self["secret"])
        self["data"] = data_directory("--data", self["data"])


def makeService(options: Options):
    from twisted.internet import reactor

    from deposito import allocator, diagnostics, hangup, listening, twisted_internals

    twisted_internals.steady_clock(reactor)
    allocator.tune_for_streams()
    allocator.trim_when_large(reactor)
    diagnostics.stacks_on_signal(options["data"])
    hangup.reread_on_hangup(reactor, [])
    listening.more_descriptors()

    from deposito.storage import Reaching, StorageService

    return StorageService(
        reactor,
        options["data"],
        endpoints.serverFromString(reactor, options["port"]),
        [Reaching(endpoints.clientFromString(reactor, proxy), proxy) for proxy in options["proxy"]],
        options["name"],
        options["zone"],
        options["capacity"],
        scrub_every=options["scrub-every"],
        secret=options["secret"],
        handoff=not options["no-handoff"],
    )

"""``twistd deposito-proxy``: options and service wiring for the proxy."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import endpoints
from twisted.python import usage

from deposito.options import (FirstLineOptions, check_endpoint, data_directory, parse_bytes, parse_catalog, parse_int,
                              parse_seconds, read_secret)
from deposito.tokens import Tokens


class Options(FirstLineOptions):
    command = "deposito-proxy"
    synopsis = ("[--port EP] [--cluster-port EP] [--data DIR] [--replicas N] [--dead-after SECONDS]"
                " [--secret FILE] [--tokens FILE] [--max-size BYTES] [--rebuild] [--http EP]"
                " [--s3 EP --s3-keys FILE [--s3-domain NAME] [--upload-expiry SECONDS]]"
                " [--collect-rate N] [--catalog URL [--lease SECONDS]]")
    longdesc = ("The Deposito proxy: clients store and fetch files on --port (a text protocol "
                "you can speak with telnet); storage servers join on --cluster-port.")
    optFlags = [
        ["rebuild", None, "make the catalog again from the servers' blob metadata (newest version of each name)"],
    ]
    optParameters = [
        ["port", None, "tcp:7000", "client endpoint for the text protocol"],
        ["cluster-port", None, "tcp:7001", "endpoint where storage servers join"],
        ["data", None, "./deposito-proxy", "directory for the catalog (when it is in SQLite)"],
        ["catalog", None, "sqlite:", "where the catalog lives: sqlite: (in --data) or a postgresql:// URL,"
         " which several proxies may share"],
        ["replicas", None, "2", "replica count for a PUT that names none (1-16)"],
        ["dead-after", None, "300", "seconds of silence after which a server is dead and its copies are made again"],
        ["lease", None, "30", "seconds a proxy may be silent before the others sharing its catalog take over"
                              " its unfinished uploads and work"],
        ["http", None, None, "endpoint for the status page, /metrics, the JSON API and downloads (off unless given)"],
        ["s3", None, None, "endpoint for the S3 API (off unless given; needs --s3-keys)"],
        ["s3-keys", None, None, "file of S3 key pairs, one '<access-key-id> <secret-access-key>' per line"],
        ["s3-domain", None, None, "the S3 API's domain name D: a request to host B.D is to bucket B"
         " (virtual-host style; path style always works)"],
        ["tokens", None, None, "file of client tokens, one per line: clients must AUTH first"],
        ["max-size", None, None, "the largest file accepted, e.g. 10G (ERR toolarge above it)"],
        ["secret", None, None, "file holding the cluster secret: only servers that prove they hold it may join"],
        ["upload-expiry", None, "604800", "seconds after its last part an unfinished S3 multipart upload is aborted"
         " (7 days)"],
        ["collect-rate", None, "1000", "garbage copies (replaced, deleted or unfinished) deleted from the servers"
         " a second, at most"],
    ]

    def postOptions(self) -> None:
        from twisted.internet import reactor

        for option in ("port", "cluster-port", "http", "s3"):
            if self[option] is None:
                continue
            check_endpoint(f"--{option}", self[option],
                           lambda v: endpoints.serverFromString(reactor, v))
        self["replicas"] = parse_int("--replicas", self["replicas"], 1, 16)
        self["dead-after"] = parse_seconds("--dead-after", self["dead-after"])
        self["lease"] = parse_seconds("--lease", self["lease"])
        if self["lease"] < 1:
            raise usage.UsageError(f"--lease must be 1 second or more, not {self['lease']}")
        self["upload-expiry"] = parse_seconds("--upload-expiry", self["upload-expiry"])
        self["collect-rate"] = parse_int("--collect-rate", self["collect-rate"], 1, 1_000_000)
        if self["tokens"] is not None:
            try:
                self["tokens"] = Tokens.from_file(self["tokens"])
            except (OSError, ValueError, UnicodeDecodeError) as e:
                raise usage.UsageError(f"--tokens: {e}") from None
        if self["secret"] is not None:
            self["secret"] = read_secret("--secret", self["secret"])
        if self["s3"] is not None and self["s3-keys"] is None:
            raise usage.UsageError("--s3 needs --s3-keys FILE: the key pairs S3 requests are signed with")
        if self["s3-keys"] is not None:
            from deposito.s3.keys import S3Keys

            try:
                self["s3-keys"] = S3Keys.from_file(self["s3-keys"])
            except (OSError, ValueError, UnicodeDecodeError) as e:
                raise usage.UsageError(f"--s3-keys: {e}") from None
        if self["s3-domain"] is not None and not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?",
                                                                self["s3-domain"].lower()):
            raise usage.UsageError(f"--s3-domain must be a domain name, not {self['s3-domain']!r}")
        if self["max-size"] is not None:
            self["max-size"] = parse_bytes("--max-size", self["max-size"])
        self["data"] = data_directory("--data", self["data"])
        self["catalog"] = parse_catalog("--catalog", self["catalog"])


def makeService(options: Options):
    from twisted.internet import reactor

    from deposito import allocator, diagnostics, hangup, listening, twisted_internals

    twisted_internals.steady_clock(reactor)
    allocator.tune_for_streams()
    allocator.trim_when_large(reactor)
    diagnostics.stacks_on_signal(options["data"])
    listening.more_descriptors()

    from deposito.catalog.database import Damaged
    from deposito.catalog.schema import NewerSchema

    hangup.reread_on_hangup(reactor, [("--tokens", options["tokens"]), ("--s3-keys", options["s3-keys"])])
    try:
        return _proxy_service(reactor, options)
    except Damaged as e:
        raise SystemExit(f"deposito-proxy: {e}: move it aside, and start with --rebuild to make it again"
                         " from the storage servers") from None
    except NewerSchema as e:
        raise SystemExit(f"deposito-proxy: {e}") from None


def _proxy_service(reactor: Any, options: Options) -> Any:  # (its modules load only when it starts)
    from deposito.proxy import ProxyService

    return ProxyService(
        reactor,
        options["data"],
        endpoints.serverFromString(reactor, options["port"]),
        endpoints.serverFromString(reactor, options["cluster-port"]),
        options["replicas"],
        dead_after=options["dead-after"],
        http_endpoint=endpoints.serverFromString(reactor, options["http"]) if options["http"] else None,
        s3_endpoint=endpoints.serverFromString(reactor, options["s3"]) if options["s3"] else None,
        s3_keys=options["s3-keys"],
        s3_domain=options["s3-domain"],
        tokens=options["tokens"],
        max_size=options["max-size"],
        secret=options["secret"],
        rebuild=bool(options["rebuild"]),
        collect_rate=options["collect-rate"],
        catalog=options["catalog"],
        lease=options["lease"],
        upload_expiry=options["upload-expiry"],
    )

"""TLS on the proxy's client and cluster ports, with a throwaway CA (real processes).

Needs ``cryptography`` (to make the certificates) and Twisted's TLS stack
(``pyopenssl`` and ``service_identity``, Twisted's ``tls`` extra)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.cluster import Cluster, Wire, fields, poll, sha

pytestmark = pytest.mark.slow

try:
    import OpenSSL  # noqa: F401  (Twisted's TLS needs it)
    import service_identity  # noqa: F401
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"TLS stack not installed ({e.name}): pip install pyopenssl service_identity",
                allow_module_level=True)


# -- a throwaway PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(ca_key, ca_cert, cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def pem_cert(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


class PKI:
    """A CA (its cert alone in ``trust/``, as trustRoots wants a folder) and the proxy's key and cert."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        ca_key, ca_cert = make_ca("Deposito test CA")
        key, cert = make_leaf(ca_key, ca_cert, "127.0.0.1")
        self.trust = root / "trust"
        self.trust.mkdir()
        self.ca = self.trust / "ca.pem"
        self.ca.write_bytes(pem_cert(ca_cert))
        self.key = root / "proxy.key"
        self.key.write_bytes(pem_key(key))
        os.chmod(self.key, 0o600)
        self.cert = root / "proxy.pem"
        self.cert.write_bytes(pem_cert(cert))
        # another CA, which did not sign the proxy's certificate
        self.other = root / "other"
        self.other.mkdir()
        (self.other / "ca.pem").write_bytes(pem_cert(make_ca("Someone else")[1]))


# -- the cluster over TLS


class TlsWire(Wire):
    """The text protocol over TLS, verifying the proxy against the test CA."""

    def __init__(self, port: int, context: ssl.SSLContext, timeout: float = 30) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.buf = b""
        self.greeting = self.line()


class TlsCluster(Cluster):
    def __init__(self, root: Path, pki: PKI) -> None:
        super().__init__(root)
        self.pki = pki
        self.context = ssl.create_default_context(cafile=str(pki.ca))

    def start_proxy(self, *extra: str) -> None:
        keys = f"privateKey={self.pki.key}:certKey={self.pki.cert}"
        self.proxy = self.twistd("proxy", [
            "deposito-proxy", "--port", f"ssl:{self.port}:interface=127.0.0.1:{keys}",
            "--cluster-port", f"ssl:{self.cport}:interface=127.0.0.1:{keys}",
            "--data", str(self.root / "proxy")] + list(extra))

        def ready() -> bool:
            try:
                self.wire().close()
                return True
            except OSError:
                return self.proxy.poll() is not None
        poll(ready, 30, every=0.05)
        if self.proxy.poll() is not None:
            raise RuntimeError("proxy did not start:\n" + self.log("proxy")[-3000:])

    def start_server(self, sid: str, *extra: str, trust: Path | None = None) -> None:
        d = self.server_dir(sid)
        d.mkdir(exist_ok=True)
        roots = trust or self.pki.trust
        self.servers[sid] = self.twistd(sid, [
            "deposito-server", "--proxy", f"tls:127.0.0.1:{self.cport}:trustRoots={roots}",
            "--port", "tcp:0:interface=127.0.0.1", "--data", str(d), "--name", sid,
            "--zone", f"z{sid}"] + list(extra))

    def wire(self) -> TlsWire:
        return TlsWire(self.port, self.context)


@pytest.fixture
def tls_cluster(tmp_path):
    c = TlsCluster(tmp_path, PKI(tmp_path / "pki"))
    c.start(2)
    try:
        yield c
    finally:
        c.stop()


def test_put_and_get_over_tls_with_servers_joining_over_tls(tls_cluster):
    c = tls_cluster
    data = os.urandom((2 << 20) + 17)
    with c.wire() as w:
        assert w.greeting.startswith("OK deposito ")
        assert w.sock.version() in ("TLSv1.2", "TLSv1.3")
        r = w.put("secure/file.bin", data, 2)
        assert r.startswith("OK stored") and fields(r)["sha256"] == sha(data), r
        head, got = w.get("secure/file.bin")
        assert got == data and fields(head)["sha256"] == sha(data), head
        assert w.stat("secure/file.bin")["have"] == "2"
    assert len(c.holders(data)) == 2  # the servers that joined over TLS hold the copies
    assert sorted(c.states()) == ["s0", "s1"]


def test_tls_ports_refuse_what_does_not_check_out(tls_cluster):
    c = tls_cluster
    # a client that does not trust the CA fails the handshake
    with pytest.raises(ssl.SSLCertVerificationError):
        TlsWire(c.port, ssl.create_default_context(cafile=str(c.pki.other / "ca.pem")), timeout=10)
    # a plain-text client never gets the greeting in clear
    s = socket.create_connection(("127.0.0.1", c.port), 5)
    s.settimeout(3)
    s.sendall(b"HELP\n")
    try:
        got = s.recv(4096)
    except (socket.timeout, ConnectionError):
        got = b""
    s.close()
    assert b"OK deposito" not in got and b"PUT <name>" not in got
    # a server that does not trust the proxy's certificate never joins
    c.start_server("s9", trust=c.pki.other)
    time.sleep(2.0)
    assert sorted(c.states()) == ["s0", "s1"]
    assert "storage server s9 joined" not in c.log("proxy")
    assert c.servers["s9"].poll() is None  # it keeps trying, as a server started before its proxy does
    with c.wire() as w:  # the proxy is unharmed
        assert w.put("after", b"fine", 2).startswith("OK stored")

"""The S3 gateway `farm up --listen ADDR` exposes: the one SeaweedFS endpoint other hosts reach.

SeaweedFS's master, volume and filer answer anyone on their HTTP and gRPC ports (list, read,
write, delete, `/dir/assign`, `weed shell`). With --listen they stay on loopback (`weed mini`
without its S3 server), and a separate `weed s3` serves S3 on ADDR: it checks every request's
signature against the farm's identities and reaches the filer and volumes over loopback.

`weed s3` also opens a gRPC port on ADDR (its port + 10000) whose `Configure` call replaces the S3
identities, unauthenticated. That port is put behind mutual TLS: the gateway's certificate is
self-signed and is the only CA its gRPC server trusts, so only a holder of its key (0600 in the
state directory, never handed out) could present a client certificate it accepts.
"""

from __future__ import annotations

import datetime
import json
import socket
from pathlib import Path

from renderfarm.localfarm.services import LOOPBACK, WEED_S3_LOGGING, weed_binary, write_private

GRPC_OFFSET = 10000  # SeaweedFS's gRPC port is its HTTP port + 10000 unless told otherwise
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)  # and an empty SETTINGS frame


def gateway_argv(data_dir: Path, *, port: int, filer_port: int, bind: str, s3_config: Path) -> list[str]:
    """Write the gateway's certificate and security.toml under `data_dir`/gateway and return the
    command line of a `weed s3` serving S3 (and its mTLS gRPC port) on `bind`."""
    conf_dir = data_dir / "gateway"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.chmod(0o700)
    cert, key = conf_dir / "grpc.pem", conf_dir / "grpc.key"
    if not (cert.exists() and key.exists()):
        cert_pem, key_pem = self_signed_certificate(bind)
        write_private(key, key_pem)
        write_private(cert, cert_pem)
    # In a config directory of the gateway's own: `weed mini` reads ./security.toml from the state
    # directory, and mutual TLS is for the gateway's port alone. (JSON strings are TOML strings.)
    write_private(
        conf_dir / "security.toml",
        f"[grpc]\nca = {json.dumps(str(cert))}\n\n[grpc.s3]\ncert = {json.dumps(str(cert))}\n"
        f"key = {json.dumps(str(key))}\n",
    )
    argv = [
        weed_binary(), *WEED_S3_LOGGING, f"-config_dir={conf_dir}", "s3", f"-ip={bind}", f"-ip.bind={bind}",
        f"-port={port}", f"-port.grpc={port + GRPC_OFFSET}", f"-filer={LOOPBACK}:{filer_port}",
        f"-config={s3_config}", "-port.iceberg=0", "-port.lance=0",
    ]
    socket_path = data_dir / "s3.sock"  # default /tmp; keep it with the farm when short enough
    if len(str(socket_path)) < 100:
        argv.append(f"-localSocket={socket_path}")
    return argv


def filer_answers(port: int) -> bool:
    """The filer of `weed mini` answers on loopback (the gateway needs it to start)."""
    from urllib.request import urlopen

    with urlopen(f"http://{LOOPBACK}:{port}/", timeout=2) as response:
        return response.status == 200


def self_signed_certificate(address: str) -> tuple[str, str]:
    """A P-256 certificate and key (PEM) for `address`, valid for ten years, that may sign
    certificates (it is its own CA)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renderfarm s3 gateway grpc")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def speaks_cleartext_http2(host: str, port: int, timeout: float = 3.0) -> bool:
    """True if the port answers an HTTP/2 preface in the clear: a gRPC server without TLS, open to
    anyone. (SeaweedFS serves its gRPC ports without TLS when it cannot load the certificate.)"""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_HTTP2_PREFACE)
        header = b""
        try:
            while len(header) < 9 and (more := sock.recv(9 - len(header))):
                header += more
        except OSError:  # reset, or silent until the timeout: not a cleartext HTTP/2 server
            return False
    return len(header) == 9 and header[3] == 0x4  # a SETTINGS frame back

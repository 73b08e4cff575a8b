"""Key material: the connected app's JWT key pair + certificate, and the sandbox's TLS.

``jwt_keypair(dir)`` writes ``private-key.pem`` (mode 0600) and ``cert.pem`` (the
certificate to register with the connected app). ``tls_material(dir, hosts)`` writes a
self-signed CA (``ca.pem``) and a server certificate signed by it (``server.pem``,
``server-key.pem``) for ``localhost``, ``127.0.0.1``, ``::1`` and the given hosts.
Existing files are kept, so restarts keep trusting the same CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def _cert(subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name | None = None,
          issuer_key: rsa.RSAPrivateKey | None = None, ca: bool = False,
          sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def jwt_keypair(directory: str | Path) -> tuple[Path, Path]:
    """(private key path, certificate path) for the JWT bearer flow, created if absent."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = d / "private-key.pem", d / "cert.pem"
    if not (key_path.exists() and cert_path.exists()):
        key = _key()
        _write_key(key_path, key)
        cert = _cert("sfprov-sandbox-connected-app", key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def tls_material(directory: str | Path, hosts: tuple[str, ...] = ()) -> dict[str, Path]:
    """Paths ``ca``, ``cert``, ``key`` of the sandbox's TLS material, created if absent."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server-key.pem"}
    if all(p.exists() for p in paths.values()):
        return paths
    ca_key = _key()
    ca_cert = _cert("sfprov sandbox CA", ca_key, ca=True)
    server_key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in dict.fromkeys(("127.0.0.1", "::1", *hosts)):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_cert = _cert("localhost", server_key, issuer=ca_cert.subject, issuer_key=ca_key,
                        sans=sans)
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["key"], server_key)
    return paths

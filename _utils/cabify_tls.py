"""
The TLS material of Consul agents' RPC, from a CA that Salt makes and keeps on the
master. Files, all under one directory (0700):

    ca.pem, ca-key.pem                  the CA (EC P-256, self-signed; key 0600)
    agents/<node>.pem, <node>-key.pem   one agent's certificate and key (key 0600)
    .lock                               flock held while any of them is written

An agent's certificate serves both ways (serverAuth and clientAuth); a server's also
names ``server.<datacenter>.consul``, which is what Consul's ``verify_server_hostname``
checks. Files are written to a temporary file beside them and moved into place, so a
reader never sees half of one; the lock keeps two makers from racing.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
AGENTS = "agents"
LOCK = ".lock"
RENEW_BEFORE = datetime.timedelta(days=30)
# Certificates start a little in the past: a host whose clock lags still accepts them.
BACKDATE = datetime.timedelta(minutes=5)

NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
DATACENTER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; an agent signs its handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def ensure_ca(directory: str, name: str = "Cabify Consul CA", days: int = 3650) -> str:
    """Make the CA in DIRECTORY unless it is there; return the CA certificate's PEM text."""
    if _ca_exists(directory):
        return _read(os.path.join(directory, CA_CERT))
    with _locked(directory):
        return _ca_locked(directory, name, days)[0]


def agent_cert(
    directory: str, node: str, datacenter: str, server: bool, addresses: list[str], days: int = 825
) -> dict:
    """The certificate of NODE's Consul agent, signed by DIRECTORY's CA: the cached one
    while it still fits and has more than 30 days left, else a new one. Return
    ``{"ca": <CA PEM>, "cert": <certificate PEM>, "key": <private key PEM>}``."""
    if not NODE_RE.fullmatch(node or ""):
        raise ValueError(f"invalid node name for a certificate file: {node!r}")
    if not DATACENTER_RE.fullmatch(datacenter or ""):
        raise ValueError(f"invalid datacenter name: {datacenter!r}")
    common_name = f"{'server' if server else 'client'}.{datacenter}.consul"
    names = _alt_names(node, datacenter, server, addresses)
    cert_path = os.path.join(directory, AGENTS, f"{node}.pem")
    key_path = os.path.join(directory, AGENTS, f"{node}-key.pem")
    with _locked(directory):
        ca_pem, ca_cert, ca_key = _ca_locked(directory, "Cabify Consul CA", 3650)
        cached = _cached(cert_path, key_path, ca_cert, common_name, names)
        if cached is not None:
            return {"ca": ca_pem, "cert": cached[0], "key": cached[1]}
        cert_pem, key_pem = _issue(ca_cert, ca_key, common_name, names, days)
        _makedir(os.path.join(directory, AGENTS))
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem, 0o644)
        return {"ca": ca_pem, "cert": cert_pem, "key": key_pem}


def fingerprint(pem: str) -> str:
    """Return the SHA-256 fingerprint of the certificate PEM as colon-separated upper-case hex."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


# --- the CA -----------------------------------------------------------------------


def _ca_exists(directory: str) -> bool:
    """Return whether both the CA certificate and its key are in DIRECTORY."""
    return all(os.path.isfile(os.path.join(directory, f)) for f in (CA_CERT, CA_KEY))


def _ca_locked(
    directory: str, name: str, days: int
) -> tuple[str, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """With the lock held: load the CA, making it first if absent. Return (PEM, certificate, key)."""
    cert_path, key_path = os.path.join(directory, CA_CERT), os.path.join(directory, CA_KEY)
    if not _ca_exists(directory):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        os.chmod(directory, 0o700)
        # the key first: a CA certificate on disk always has its key beside it
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, _cert_pem(cert), 0o644)
    pem = _read(cert_path)
    key = serialization.load_pem_private_key(_read(key_path).encode("ascii"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an EC private key")
    return pem, x509.load_pem_x509_certificate(pem.encode("ascii")), key


# --- agents' certificates ---------------------------------------------------------


def _alt_names(node: str, datacenter: str, server: bool, addresses: list[str]) -> frozenset[x509.GeneralName]:
    """Return the subject alternative names an agent's certificate must carry."""
    names: set[x509.GeneralName] = {
        x509.DNSName("localhost"),
        x509.DNSName(node),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    }
    if server:
        names.add(x509.DNSName(f"server.{datacenter}.consul"))
    for address in addresses or []:
        try:
            names.add(x509.IPAddress(ipaddress.ip_address(str(address).strip())))
        except ValueError:
            continue  # empty or not an IP address: not something a certificate can name
    return frozenset(names)


def _cached(
    cert_path: str,
    key_path: str,
    ca_cert: x509.Certificate,
    common_name: str,
    names: frozenset[x509.GeneralName],
) -> tuple[str, str] | None:
    """Return (certificate PEM, key PEM) of the agent's files if they still fit, else None."""
    try:
        cert_pem, key_pem = _read(cert_path), _read(key_path)
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return None
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    fits = (
        [a.value for a in common_names] == [common_name]
        and frozenset(san) == names
        and key.public_key() == cert.public_key()
        and cert.not_valid_after_utc - _now() > RENEW_BEFORE
    )
    return (cert_pem, key_pem) if fits else None


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    names: frozenset[x509.GeneralName],
    days: int,
) -> tuple[str, str]:
    """Make a key and a certificate for it signed by the CA; return (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    # never past the CA's own end: a chain is only as good as its shortest link
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sorted(names, key=_name_order)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def _name_order(name: x509.GeneralName) -> tuple[int, str]:
    """Return a sort key putting DNS names before IP addresses, each in text order."""
    return (0 if isinstance(name, x509.DNSName) else 1, str(name.value))


# --- files ------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Hold an exclusive flock on DIRECTORY/.lock (making DIRECTORY, 0700) for the block."""
    _makedir(directory)
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing lets go of the lock


def _makedir(path: str) -> None:
    """Make PATH (and its parents) if absent, PATH itself with mode 0700."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # makedirs' mode is filtered by the umask


def _write(path: str, text: str, mode: int) -> None:
    """Write TEXT to PATH with MODE atomically: a temporary file beside it, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read(path: str) -> str:
    """Return the text of PATH."""
    with open(path, encoding="ascii") as handle:
        return handle.read()


def _cert_pem(cert: x509.Certificate) -> str:
    """Return CERT as PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """Return KEY as unencrypted PEM text (SEC 1 "EC PRIVATE KEY", as Consul's own tooling writes)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")


def _now() -> datetime.datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.datetime.now(datetime.UTC)

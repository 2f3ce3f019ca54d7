"""The Consul agents' TLS material: a CA made once and kept, agents' certificates that
chain to it, name what Consul checks, and are remade only when they no longer fit."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.unit.conftest import load

tls = load("utils", "cabify_tls")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def parse(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


def verify(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Raise unless CERT is signed by CA."""
    if hasattr(cert, "verify_directly_issued_by"):
        cert.verify_directly_issued_by(ca)
    else:
        ca.public_key().verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def test_ca_is_made_once_and_kept(tmp_path):
    directory = tmp_path / "ca"
    first = tls.ensure_ca(str(directory))
    assert first.startswith("-----BEGIN CERTIFICATE-----")
    assert tls.ensure_ca(str(directory)) == first
    ca = parse(first)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).critical
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    verify(ca, ca)


def test_key_files_and_directory_are_private(tmp_path):
    directory = tmp_path / "ca"
    tls.agent_cert(str(directory), "web-1", "dc1", server=False, addresses=["10.0.0.5"])
    assert mode(directory) == 0o700
    assert mode(directory / "ca-key.pem") == 0o600
    assert mode(directory / "agents" / "web-1-key.pem") == 0o600
    assert not [p for p in directory.rglob(".*.pem.*")], "temporary files left behind"


def test_server_cert_chains_to_the_ca_and_names_the_server(tmp_path):
    got = tls.agent_cert(str(tmp_path), "consul-1", "dc1", server=True, addresses=["10.0.0.2", "", "nope"])
    ca, cert = parse(got["ca"]), parse(got["cert"])
    verify(cert, ca)
    assert got["ca"] == tls.ensure_ca(str(tmp_path))
    assert set(dns_names(cert)) == {"server.dc1.consul", "localhost", "consul-1"}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.2"}
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages and ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert cert.subject.rfc4514_string() == "CN=server.dc1.consul"
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    key = x509.load_pem_x509_certificate(got["cert"].encode()).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"


def test_client_cert_does_not_name_the_server(tmp_path):
    got = tls.agent_cert(str(tmp_path), "web-1", "dc1", server=False, addresses=["10.0.0.5"])
    cert = parse(got["cert"])
    verify(cert, parse(got["ca"]))
    assert "server.dc1.consul" not in dns_names(cert)
    assert cert.subject.rfc4514_string() == "CN=client.dc1.consul"


def test_cert_is_kept_while_it_fits_and_remade_when_not(tmp_path):
    first = tls.agent_cert(str(tmp_path), "web-1", "dc1", server=False, addresses=["10.0.0.5"])
    again = tls.agent_cert(str(tmp_path), "web-1", "dc1", server=False, addresses=["10.0.0.5"])
    assert again == first
    moved = tls.agent_cert(str(tmp_path), "web-1", "dc1", server=False, addresses=["10.0.0.6"])
    assert moved["cert"] != first["cert"] and moved["key"] != first["key"]
    assert moved["ca"] == first["ca"]
    promoted = tls.agent_cert(str(tmp_path), "web-1", "dc1", server=True, addresses=["10.0.0.6"])
    assert promoted["cert"] != moved["cert"]
    assert "server.dc1.consul" in dns_names(parse(promoted["cert"]))


def test_cert_close_to_its_end_is_remade(tmp_path):
    first = tls.agent_cert(str(tmp_path), "web-1", "dc1", server=False, addresses=[], days=20)
    again = tls.agent_cert(str(tmp_path), "web-1", "dc1", server=False, addresses=[])
    assert again["cert"] != first["cert"]


@pytest.mark.parametrize("node", ["", "../etc/passwd", "a/b", ".hidden", "web 1", "web-1\n", "x" * 64])
def test_bad_node_name_is_refused(tmp_path, node):
    with pytest.raises(ValueError, match="node"):
        tls.agent_cert(str(tmp_path), node, "dc1", server=False, addresses=[])
    assert not (tmp_path / "agents").exists()


def test_fingerprint_is_sha256_hex_with_colons(tmp_path):
    pem = tls.ensure_ca(str(tmp_path))
    found = tls.fingerprint(pem)
    assert found.replace(":", "").lower() == parse(pem).fingerprint(hashes.SHA256()).hex()
    assert len(found.split(":")) == 32


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_openssl_verifies_a_server_cert(tmp_path):
    tls.agent_cert(str(tmp_path), "consul-1", "dc1", server=True, addresses=["10.0.0.2"])
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            str(tmp_path / "ca.pem"),
            str(tmp_path / "agents" / "consul-1.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ca_made_by_racing_processes_is_one_ca(tmp_path):
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=6, mp_context=context) as pool:
        found = set(pool.map(tls.ensure_ca, [str(tmp_path / "ca")] * 12))
    assert len(found) == 1
    assert found == {(tmp_path / "ca" / "ca.pem").read_text()}

"""wss:// through Daphne's own TLS endpoint, with a throwaway certificate made for the test."""

import datetime
import ipaddress
import json
import ssl
import urllib.request
from pathlib import Path

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers import DaphneServer


def throwaway_certificate(folder: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_daphne(daphne_env, tmp_path):
    certificate, key = throwaway_certificate(tmp_path)
    server = DaphneServer(env=daphne_env, tls=(certificate, key)).start()
    server.client_context = ssl.create_default_context(cafile=str(certificate))
    yield server
    server.stop()


async def test_wss_echo_and_https_through_daphnes_tls_endpoint(tls_daphne):
    """A client that trusts the certificate talks wss:// to ws/ and https:// to the site."""
    context = tls_daphne.client_context
    async with websockets.connect(tls_daphne.ws_url + "/ws/", ssl=context, origin="https://127.0.0.1") as ws:
        await ws.send("secure")
        assert await ws.recv() == "Server: Hello. You said: secure"
    with urllib.request.urlopen(tls_daphne.http_url + "/healthz", context=context, timeout=5) as response:
        assert json.loads(response.read())["status"] == "ok"


async def test_a_client_that_does_not_trust_the_certificate_is_refused(tls_daphne):
    """Without the certificate, verification fails: TLS is really in use."""
    with pytest.raises(ssl.SSLCertVerificationError):
        async with websockets.connect(tls_daphne.ws_url + "/ws/", ssl=ssl.create_default_context()):
            pass

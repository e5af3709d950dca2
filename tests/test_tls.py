"""TLS and mutual TLS, with certificates made at test time."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

import flowtrack
from flowtrack.config import Settings
from flowtrack.domain.keys import Scope
from flowtrack.server import StartupError, create_server
from flowtrack.v1 import campaign_pb2
from tests.conftest import ServerThread, database_of, error_details, start_server
from tests.tenants import create_key, keyed_client


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (folder / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return folder / f"{name}.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, rogue_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("flowtrack test CA", ca_key, None, ca=True)
    rogue_ca = _certificate("rogue CA", rogue_ca_key, None, ca=True)
    server_key, client_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    server = _certificate("localhost", server_key, (ca.subject, ca_key), server=True)
    client = _certificate("engine-1", client_key, (ca.subject, ca_key))
    rogue = _certificate("engine-x", rogue_key, (rogue_ca.subject, rogue_ca_key))
    return Pki(
        ca=_write(folder, "ca", ca),
        server_cert=_write(folder, "server", server, server_key),
        server_key=folder / "server.key",
        client_cert=_write(folder, "client", client, client_key),
        client_key=folder / "client.key",
        rogue_ca=_write(folder, "rogue-ca", rogue_ca),
        rogue_cert=_write(folder, "rogue", rogue, rogue_key),
        rogue_key=folder / "rogue.key",
    )


def _healthy(channel: grpc.Channel) -> bool:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error  # type: ignore[attr-defined]
        return False
    finally:
        channel.close()
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _tls_server(tmp_path: Path, pki: Pki, *, mutual: bool = False) -> ServerThread:
    return start_server(
        tmp_path,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca) if mutual else None,
    )


def test_tls(tmp_path: Path, pki: Pki) -> None:
    key = create_key(database_of(tmp_path), "acme", Scope.ADMIN)
    running = _tls_server(tmp_path, pki)
    try:
        address = running.address
        assert _healthy(flowtrack.client_channel(address, tls_ca=pki.ca))
        assert _healthy(flowtrack.client_channel(f"localhost:{running.port}", tls_ca=pki.ca.read_bytes()))
        # Plaintext to a TLS port, or a server certificate from an unknown CA: no connection.
        assert not _healthy(grpc.insecure_channel(address))
        assert not _healthy(flowtrack.client_channel(address, tls_ca=pki.rogue_ca))
        # The API key rides as call credentials on TLS.
        client = keyed_client(address, key, tls_ca=pki.ca)
        client.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="c1", name="over TLS")), timeout=10
        )
        assert client.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="c1")).campaign.name
        client.channel.close()
        anonymous = keyed_client(address, None, tls_ca=pki.ca)
        with pytest.raises(grpc.RpcError) as raised:
            anonymous.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="c1"), timeout=10)
        assert error_details(raised.value).reason == "NO_CREDENTIALS"
        anonymous.channel.close()
    finally:
        running.stop()


def test_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    running = _tls_server(tmp_path, pki, mutual=True)
    try:
        address = running.address
        good = flowtrack.client_channel(address, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)
        assert _healthy(good)
        # Open mode still applies (loopback, no keys): the certificate is what lets a client in.
        client = keyed_client(address, None, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)
        client.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
        client.channel.close()
        # No client certificate, or one from another CA: refused at the handshake.
        assert not _healthy(flowtrack.client_channel(address, tls_ca=pki.ca))
        assert not _healthy(
            flowtrack.client_channel(address, tls_ca=pki.ca, tls_cert=pki.rogue_cert, tls_key=pki.rogue_key)
        )
        assert not _healthy(grpc.insecure_channel(address))
        # The server is fine afterwards.
        assert _healthy(
            flowtrack.client_channel(address, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)
        )
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"tls_cert": "server"}, "both --tls-cert and --tls-key"),
        ({"tls_client_ca": "ca"}, "--tls-client-ca needs"),
        ({"tls_cert": "missing", "tls_key": "server_key"}, "cannot read TLS certificate"),
        ({"tls_cert": "server_key", "tls_key": "not_pem"}, "not PEM"),
    ],
)
def test_tls_settings_errors_are_startup_errors(tmp_path: Path, pki: Pki, files: dict[str, str], message: str) -> None:
    (tmp_path / "junk.txt").write_text("hello")
    paths = {
        "server": str(pki.server_cert),
        "server_key": str(pki.server_key),
        "ca": str(pki.ca),
        "missing": str(tmp_path / "nope.pem"),
        "not_pem": str(tmp_path / "junk.txt"),
    }
    settings = Settings(
        listen="127.0.0.1:0", database=str(tmp_path / "x.db"), **{k: paths[v] for k, v in files.items()}
    )
    with pytest.raises(StartupError, match=message):
        asyncio.run(create_server(settings))


@pytest.mark.slow
def test_serve_with_tls_flags(tmp_path: Path, pki: Pki) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowtrack", "serve", "--listen", f"127.0.0.1:{port}",
         "--database", str(tmp_path / "s.db"), "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
         "--tls-client-ca", str(pki.ca)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "FLOWTRACK_GRACE": "1"},
    )  # fmt: skip
    try:
        channel = flowtrack.client_channel(
            f"127.0.0.1:{port}", tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
        )
        grpc.channel_ready_future(channel).result(timeout=20)
        assert _healthy(channel)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "OPEN MODE" in err


def test_client_channel_argument_errors() -> None:
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        flowtrack.client_channel("127.0.0.1:1", tls_cert=b"x")
    with pytest.raises(ValueError, match="contradicts"):
        flowtrack.client_channel("127.0.0.1:1", tls=False, tls_ca=b"x")

"""The local API's private CA: clients that trust ca.pem can verify the loopback server."""

from __future__ import annotations

import datetime
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509

from gantry.local import tls


def _handshake(files: tls.TlsFiles, server_name: str) -> str:
    """TLS handshake on loopback: server with the certificate, client trusting only ca.pem."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(files.cert_file), str(files.key_file))
    client_context = ssl.create_default_context(cafile=str(files.ca_file))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls_connection:
                tls_connection.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_context.wrap_socket(raw, server_hostname=server_name) as connection,
        ):
            version = connection.version() or ""
            connection.sendall(b"x")
            return version
    finally:
        thread.join(timeout=5)
        listener.close()


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_a_client_trusting_the_ca_verifies_the_server(tmp_path, name):
    files = tls.ensure_certificates(tmp_path)
    assert _handshake(files, name).startswith("TLS")


def test_a_client_without_the_ca_refuses_the_server(tmp_path):
    files = tls.ensure_certificates(tmp_path)
    other = tls.ensure_certificates(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls.TlsFiles(other.ca_file, files.cert_file, files.key_file), "127.0.0.1")


def test_keys_are_owner_only_and_certificates_are_reused(tmp_path):
    files = tls.ensure_certificates(tmp_path)
    for key in (files.key_file, tmp_path / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = files.cert_file.read_bytes(), files.ca_file.read_bytes()
    tls.ensure_certificates(tmp_path)
    assert (files.cert_file.read_bytes(), files.ca_file.read_bytes()) == before


def test_an_expiring_server_certificate_is_renewed_under_the_same_ca(tmp_path, monkeypatch):
    files = tls.ensure_certificates(tmp_path)
    ca_before = files.ca_file.read_bytes()
    old = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    later = old.not_valid_after_utc - datetime.timedelta(days=1)
    monkeypatch.setattr(tls, "_now", lambda: later)
    tls.ensure_certificates(tmp_path)
    new = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc > old.not_valid_after_utc
    assert files.ca_file.read_bytes() == ca_before  # clients keep trusting it

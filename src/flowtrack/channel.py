"""A client channel to a flowtrack server: plaintext or TLS (optionally with a
client certificate for mutual TLS), with an API key sent on every call.

    import flowtrack
    from flowtrack.v1 import report_pb2_grpc

    channel = flowtrack.client_channel("flowtrack.example.com:50051", tls_ca="ca.pem", api_key=key)
    reports = report_pb2_grpc.ReportServiceStub(channel)

With TLS the key travels as call credentials (`authorization: Bearer KEY`);
gRPC refuses call credentials on plaintext channels, so there an interceptor
adds the same header. Certificates and keys are PEM, given as a path or as
bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

Pem = str | Path | bytes


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def client_channel(
    address: str,
    *,
    tls_ca: Pem | None = None,
    tls_cert: Pem | None = None,
    tls_key: Pem | None = None,
    api_key: str | None = None,
    tls: bool | None = None,
    server_name: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to `address` (HOST:PORT).

    TLS is used when `tls_ca`, `tls_cert` or `tls=True` is given; `tls_ca` is
    the CA that signed the server's certificate (default: the system's
    roots); `tls_cert` and `tls_key` are the client's certificate for mutual
    TLS. `server_name` overrides the name checked against the server's
    certificate. `api_key` is sent with every call.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("a client certificate needs both tls_cert and tls_key")
    use_tls = tls if tls is not None else (tls_ca is not None or tls_cert is not None)
    if not use_tls and (tls_ca is not None or tls_cert is not None):
        raise ValueError("tls=False contradicts tls_ca / tls_cert")
    channel_options = list(options)
    if server_name:
        channel_options.append(("grpc.ssl_target_name_override", server_name))
    if use_tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_pem(tls_ca), private_key=_pem(tls_key), certificate_chain=_pem(tls_cert)
        )
        if api_key:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.metadata_call_credentials(_ApiKeyPlugin(api_key), name="flowtrack-api-key")
            )
        return grpc.secure_channel(address, credentials, options=channel_options)
    channel = grpc.insecure_channel(address, options=channel_options)
    if api_key:
        return grpc.intercept_channel(channel, ApiKeyInterceptor(api_key))
    return channel


def _metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


class _ApiKeyPlugin(grpc.AuthMetadataPlugin):  # type: ignore[misc]
    def __init__(self, api_key: str) -> None:
        self._metadata = _metadata(api_key)

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback(self._metadata, None)


class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, base: grpc.ClientCallDetails, metadata: Sequence[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class ApiKeyInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds `authorization: Bearer KEY` to every call of a plaintext channel."""

    def __init__(self, api_key: str) -> None:
        self._metadata = _metadata(api_key)

    def _details(self, details: grpc.ClientCallDetails) -> _Details:
        existing = [(k, v) for k, v in (details.metadata or ()) if k != "authorization"]
        return _Details(details, [*existing, *self._metadata])

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

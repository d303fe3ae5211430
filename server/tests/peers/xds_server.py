"""An xDS-enabled gRPC server (gRFC A36) for server/tests/grpc_mtls.rs.

Serves the unary method /echo.Echo/Who with raw bytes (no generated code): every call is
answered with the caller's SPIFFE ID as the TLS handshake verified it (from the call's auth
context), or "anonymous" when the connection is plaintext. Its security comes from the
control plane: the listener `grpc/server?xds.resource.listening_address=127.0.0.1:PORT`
(the bootstrap named by GRPC_XDS_BOOTSTRAP), with xDS server credentials falling back to
plaintext only where that listener has no TLS. gRPC serves nothing until the control plane
answers with that listener.

Prints "started" once the server is started, and serves until its standard input closes (so
it never outlives the test that started it) or it is killed.

Usage: python xds_server.py PORT
"""

import sys
from concurrent import futures

import grpc


def peer_identity(context: grpc.ServicerContext) -> str:
    auth = context.auth_context()
    for uri in auth.get("peer_spiffe_id", []):
        return uri.decode("utf-8", "replace")
    return "anonymous"


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: xds_server.py PORT")
    port = int(sys.argv[1])

    def who(_request: bytes, context: grpc.ServicerContext) -> bytes:
        return peer_identity(context).encode()

    handler = grpc.method_handlers_generic_handler(
        "echo.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), xds=True)
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.xds_server_credentials(grpc.insecure_server_credentials())
    # The listener's name carries the address exactly as bound here.
    server.add_secure_port(f"127.0.0.1:{port}", creds)
    server.start()
    print("started", flush=True)
    for _ in sys.stdin:
        pass
    server.stop(grace=None)


if __name__ == "__main__":
    main()

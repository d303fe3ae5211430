"""A real gRPC backend for server/tests/proxyless.rs.

Serves the unary method /echo.Echo/Who with raw bytes (no generated code): every call is
answered with this backend's name. Binds 127.0.0.1:0, prints the port on stdout, and serves
until its standard input closes (so it never outlives the test that started it) or it is
killed.

Usage: python backend.py NAME
"""

import sys
from concurrent import futures

import grpc


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: backend.py NAME")
    name = sys.argv[1].encode()

    def who(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        return name

    # No (de)serializers: requests and responses are the raw message bytes.
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        sys.exit("backend.py: could not bind 127.0.0.1:0")
    server.start()
    print(port, flush=True)
    # Block until the parent closes our stdin (or dies).
    for _ in sys.stdin:
        pass
    server.stop(grace=None)


if __name__ == "__main__":
    main()

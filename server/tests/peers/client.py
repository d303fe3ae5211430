"""A proxyless gRPC client for server/tests/proxyless.rs: grpcio's built-in xDS client.

Opens one channel to TARGET (default xds:///payments:8080); grpcio reads the bootstrap named
by GRPC_XDS_BOOTSTRAP. Then reads commands on stdin, one per line, and answers each with one
JSON line on stdout, on the same channel (so the test drives phases without reconnecting):

    call N [HEADER=VALUE ...]
        N unary calls to /echo.Echo/Who, one after the other, with those metadata.
        -> {"counts": {"v1": 812, ...}, "errors": {"UNAVAILABLE: ...": 3}, "ms": 1234}

Every call waits for the channel to be ready (the first one waits for xDS configuration) and
has a deadline; a command stops early when it has run for longer than COMMAND_BUDGET. Exits
on EOF.

With --xds-creds the channel uses xDS channel credentials (gRFC A29): the TLS the control
plane configures for each cluster, with certificates from the bootstrap's certificate
providers; plaintext where a cluster has no TLS.

Usage: python client.py [TARGET] [--xds-creds]
"""

import json
import sys
import time

import grpc
import grpc.experimental

METHOD = "/echo.Echo/Who"
CALL_DEADLINE = 5.0  # seconds, per call
COMMAND_BUDGET = 60.0  # seconds, per command
MAX_CALLS = 100_000  # per command


def run_calls(who, n: int, metadata) -> dict:
    counts: dict = {}
    errors: dict = {}
    start = time.monotonic()
    for _ in range(min(n, MAX_CALLS)):
        if time.monotonic() - start > COMMAND_BUDGET:
            errors["budget exceeded"] = errors.get("budget exceeded", 0) + 1
            break
        try:
            reply = who(b"", timeout=CALL_DEADLINE, metadata=metadata, wait_for_ready=True)
            name = reply.decode("utf-8", "replace")
            counts[name] = counts.get(name, 0) + 1
        except grpc.RpcError as e:
            key = f"{e.code().name}: {e.details()}"[:300]
            errors[key] = errors.get(key, 0) + 1
    return {"counts": counts, "errors": errors, "ms": int((time.monotonic() - start) * 1000)}


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--xds-creds"]
    target = args[0] if args else "xds:///payments:8080"
    if "--xds-creds" in sys.argv[1:]:
        creds = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    # No serializers: the request and the reply are raw bytes.
    who = channel.unary_unary(METHOD)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "call" and len(words) >= 2 and words[1].isdigit():
            metadata = []
            for w in words[2:]:
                key, _, value = w.partition("=")
                metadata.append((key.lower(), value))
            out = run_calls(who, int(words[1]), tuple(metadata))
        else:
            out = {"error": f"unknown command: {line.strip()}"}
        print(json.dumps(out), flush=True)
    channel.close()


if __name__ == "__main__":
    main()

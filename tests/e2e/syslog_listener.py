#!/usr/bin/env python3
"""Tiny syslog sink for the e2e suite.

Binds a unix datagram socket (default /dev/log) and appends every message it
receives, one per line, to a file, so the suite can assert what the kvmtune hook
logged.  Only used when the machine has no /dev/log of its own.

usage: syslog_listener.py SOCKET_PATH OUTPUT_FILE READY_FILE
The READY_FILE is created once the socket is bound.  SIGTERM/SIGINT unlink the
socket and exit.
"""

import os
import signal
import socket
import sys


def main() -> int:
    sock_path, out_path, ready_path = sys.argv[1:4]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    os.chmod(sock_path, 0o666)

    def stop(_signum, _frame):
        try:
            os.unlink(sock_path)
        except OSError:
            pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    with open(out_path, "ab", buffering=0) as out:
        with open(ready_path, "w") as ready:
            ready.write(f"{os.getpid()}\n")
        while True:
            data = sock.recv(65536)
            # One message per line: fold embedded newlines, drop the trailing NUL
            # some clients send.
            text = data.rstrip(b"\0\n").replace(b"\n", b"\\n")
            out.write(text + b"\n")


if __name__ == "__main__":
    sys.exit(main())

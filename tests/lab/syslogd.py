"""A per-host syslog receiver: reads datagrams from a lab host's /dev/log, writes its maillog.

``python -m tests.lab.syslogd --socket PATH --out FILE --hostname NAME``. Lines are written
the way rsyslog writes them (``Mon DD HH:MM:SS HOST prog[pid]: message``), so the mail log
parsers read the same text they would read on a real box.
"""

from __future__ import annotations

import argparse
import os
import re
import socket

_PRI_RE = re.compile(rb"^<\d{1,3}>")


def main() -> None:
    """Receive until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hostname", required=True)
    args = parser.parse_args()
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(args.socket)
    os.chmod(args.socket, 0o666)
    host = args.hostname.encode()
    with open(args.out, "ab", buffering=0) as out:
        while True:
            data = _PRI_RE.sub(b"", sock.recv(65536)).rstrip(b"\n\x00")
            # "Nov 25 04:48:18 sm-mta[1]: msg" -> "Nov 25 04:48:18 HOST sm-mta[1]: msg"
            if len(data) > 16 and data[15:16] == b" ":
                data = data[:16] + host + b" " + data[16:]
            out.write(data + b"\n")


if __name__ == "__main__":
    main()

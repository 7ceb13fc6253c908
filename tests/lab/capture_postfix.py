"""Capture real Postfix output from lab hosts into ``tests/fixtures/postfix/``.

    cd /work/main && sudo .venv/bin/python -m tests.lab.capture_postfix [--out DIR]

Builds a lab with a Debian-style and a RHEL-style Postfix host (Debian's postfix package,
see ``tests/lab/lab.py``), drives their queues through the states a parser must read
(empty, deferred, several recipients, long reasons, hold, active) and the seed story
(deferred, relayhost, reload, flush, sent), and writes what Postfix printed, byte for byte:
``postqueue -j`` as ``NAME.postqueue-j.jsonl``, ``mailq`` as ``NAME.mailq.txt``, stderr of
failing commands as ``NAME.stderr.txt``, each host's maillog and configuration files.
Queue IDs, times and addresses change with every run; the fixtures' README says what
each file shows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.lab.lab import DOMAIN, REPO_ROOT, SEED_DOMAIN, SINK_PORT, Lab, LabError, LabHost

OUT = REPO_ROOT / "tests" / "fixtures" / "postfix"


class Capture:
    """Writes fixture files, each exactly the bytes a command printed."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)

    def file(self, name: str, data: bytes) -> None:
        """Write one fixture."""
        (self.out / name).write_bytes(data)
        print(f"  {name} ({len(data)} bytes)", flush=True)

    def stdout(self, host: LabHost, name: str, argv: Sequence[str]) -> None:
        """The stdout of ``argv`` run inside ``host`` (it must succeed)."""
        self.file(name, host.run(argv, timeout=60).stdout)

    def stderr(self, host: LabHost, name: str, argv: Sequence[str]) -> None:
        """The stderr of a command that fails inside ``host``."""
        proc = host.run(argv, check=False, timeout=60)
        if proc.returncode == 0:
            raise LabError(f"{' '.join(argv)} did not fail")
        self.file(name, proc.stderr)

    def queue(self, host: LabHost, name: str) -> None:
        """``postqueue -j`` and ``mailq`` as they are now."""
        self.stdout(host, f"{name}.postqueue-j.jsonl", ["postqueue", "-j"])
        self.stdout(host, f"{name}.mailq.txt", ["mailq"])


def _until(host: LabHost, what: str, predicate: Callable[[list[dict[str, Any]]], bool],
           timeout: float = 60) -> None:
    """Wait until ``predicate(postqueue -j)`` holds."""
    host.wait_for(lambda: predicate(host.postqueue()), timeout, what)


def _recipients_deferred(queue: list[dict[str, Any]], count: int) -> bool:
    """``count`` recipients carry a delay reason and no message is in the active queue."""
    reasons = [r for m in queue for r in m.get("recipients", []) if "delay_reason" in r]
    return len(reasons) >= count and all(m["queue_name"] != "active" for m in queue)


def _deferrals(host: LabHost) -> int:
    """How many ``status=deferred`` lines the host's maillog has."""
    return host.read_maillog().count("status=deferred")


def _clear(host: LabHost) -> None:
    host.run(["postsuper", "-d", "ALL"])
    _until(host, "an empty queue", lambda q: not q)


def _relayhost(host: LabHost, value: str) -> None:
    host.run(["postconf", "-e", f"relayhost={value}"])
    host.run(["postfix", "reload"])


def capture(out: Path, workdir: Path) -> None:
    """Build the lab, drive it, write the fixtures."""
    cap = Capture(out)
    with Lab(workdir) as lab:
        deb = lab.add_host("pbx-deb", "debian", mta="postfix")
        rhel = lab.add_host("pbx-rhel", "centos", mta="postfix")
        for host in (deb, rhel):
            for name in ("main.cf", "master.cf"):
                cap.file(f"{host.layout}-{name}", (host.config_dir / name).read_bytes())
            cap.stdout(host, f"{host.layout}-postconf-n.txt", ["postconf", "-n"])
        seed = f"someone@{SEED_DOMAIN}"

        # (a) an empty queue
        cap.queue(deb, "empty")

        # (b) one deferred voicemail (the seed story), and what the flush commands say
        deb.send_mail([seed])
        _until(deb, "one deferred message", lambda q: _recipients_deferred(q, 1))
        cap.queue(deb, "one-deferred")
        cap.stderr(deb, "postqueue-s-not-fast-flush.stderr.txt",
                   ["postqueue", "-s", SEED_DOMAIN])
        cap.stderr(deb, "sendmail-qS.stderr.txt", ["/usr/sbin/sendmail", "-qSvoicemail"])
        _clear(deb)

        # (c) one message, four recipients: three behind the seed domain's refusing MX, one
        # at a host (no MX) whose port 25 refuses too
        deb.send_mail([f"alice@{SEED_DOMAIN}", f"bob@{SEED_DOMAIN}", f"carol@{SEED_DOMAIN}",
                       f"pager@closed.{DOMAIN}"])
        _until(deb, "four deferred recipients", lambda q: _recipients_deferred(q, 4))
        cap.queue(deb, "multi-recipient")
        _clear(deb)

        # (d) long reasons: a domain whose MX lookup cannot be answered (deferred), one that
        # does not exist (bounced: its line is in the maillog, the message leaves the queue)
        deb.send_mail(["someone@example.org", f"nobody@nowhere.{SEED_DOMAIN}",
                       "voicemail@pbx.customer-site.invalid"])
        _until(deb, "two deferred recipients", lambda q: _recipients_deferred(q, 2))
        cap.queue(deb, "long-reason")
        _clear(deb)

        # (e) hold: four voicemails to the seed domain, flushed while it still refuses (the
        # queue manager marks the destination dead after a failed attempt; what it still
        # holds for it postfix/error defers with "delivery temporarily suspended: ..."),
        # then the first one put on hold with postsuper -h
        for n in range(1, 5):
            deb.send_mail([seed], subject=f"voicemail {n}")
        _until(deb, "four deferred messages", lambda q: _recipients_deferred(q, 4))
        cap.queue(deb, "several-deferred")
        for _ in range(20):  # how the flushes and the failures interleave varies
            before = _deferrals(deb)
            deb.run(["postqueue", "-f"])
            deb.run(["postqueue", "-f"])
            deb.wait_for(lambda n=before: _deferrals(deb) >= n + 4, 60,
                         "four deferrals after the flush")
            _until(deb, "four deferred messages", lambda q: _recipients_deferred(q, 4))
            if "temporarily suspended" in deb.run(["postqueue", "-j"]).stdout.decode():
                break
            time.sleep(1)
        else:
            print("  warning: no 'delivery temporarily suspended' reason after 20 flushes")
        cap.queue(deb, "flushed-deferred")
        first, second = sorted(str(m["queue_id"]) for m in deb.postqueue())[:2]
        deb.run(["postsuper", "-h", first])
        _until(deb, "a held message", lambda q: any(m["queue_name"] == "hold" for m in q))
        cap.queue(deb, "hold")
        cap.stdout(deb, "postqueue-i.stdout.txt", ["postqueue", "-i", second])
        _until(deb, "the message tried again", lambda q: _recipients_deferred(q, 3))
        _clear(deb)

        # (f) active: the relay accepts the connection and never greets, so the message
        # stays in the active queue while smtp waits
        _relayhost(deb, f"[blackhole.{DOMAIN}]:{SINK_PORT}")
        deb.send_mail([seed])
        _until(deb, "an active message", lambda q: any(m["queue_name"] == "active" for m in q))
        time.sleep(1)
        cap.queue(deb, "active")
        _clear(deb)

        # The seed story to the end on both hosts: deferred, relayhost, reload, flush, sent
        for host in (deb, rhel):
            _relayhost(host, "")
            host.send_mail([seed])
            _until(host, "a deferred voicemail", lambda q: _recipients_deferred(q, 1))
            _relayhost(host, f"[smarthost.{DOMAIN}]:{SINK_PORT}")
            host.run(["postqueue", "-f"])
            _until(host, "an empty queue", lambda q: not q)
            cap.stdout(host, f"{host.layout}-postconf-n-relayhost.txt", ["postconf", "-n"])
        # What stop, start and status log (the init script, then postfix-script and master)
        deb.run(["postfix", "status"])
        deb.stop_mta()
        deb.start_mta()
        cap.file("debian-mail.log", deb.maillog.read_bytes())
        cap.file("centos-maillog", rhel.maillog.read_bytes())


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"default {OUT}")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="the lab's directory (default: a temporary one)")
    args = parser.parse_args()
    if args.workdir is not None:
        capture(args.out, args.workdir)
        return
    with tempfile.TemporaryDirectory(prefix="relayfleet-capture-") as tmp:
        capture(args.out, Path(tmp))


if __name__ == "__main__":
    main()

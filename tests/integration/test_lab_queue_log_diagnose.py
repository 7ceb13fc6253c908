"""Queue, log and diagnose operations against real sendmail output in lab hosts, and faults."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import OpsRunner
from tests.lab.lab import SINK_PORT, LabHost

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}


def by_reason(messages: list[dict[str, object]], fragment: str) -> dict[str, object]:
    found = [m for m in messages if fragment in str(m["reason"])]
    assert found, f"no queued message with reason containing {fragment!r}: {messages}"
    return found[0]


def test_parsers_on_live_queue_and_log(host: LabHost, ops: OpsRunner) -> None:
    host.send_mail(["a@ourtest.com", "b@ourtest.com"], subject="two recipients")
    # The lab's DNS refuses names outside its zones: the submission program (MSP) cannot
    # canonify the address and keeps the message in the client queue.
    host.send_mail(["someone@unresolvable.example.org"], subject="no dns")
    host.wait_for(lambda: "Connection refused by mx.ourtest.com." in host.mailq()
                  and "lookup (unresolvable.example.org)" in host.mailq(), 30, "both deferrals")
    code, queue = ops("queue")
    assert code == 0, queue
    data = queue["data"]
    assert data["count"] == 2 and data["sections"] == {"msp": 1, "mta": 1}
    multi = by_reason(data["messages"], "Connection refused by mx.ourtest.com.")
    assert sorted(multi["recipients"]) == ["a@ourtest.com", "b@ourtest.com"]
    assert multi["sender"] == f"voicemail@{host.fqdn}" and multi["section"] == "mta"
    assert str(multi["queued_at"]).startswith(time.strftime("%Y-"))
    lookup = by_reason(data["messages"], "lookup (unresolvable.example.org)")
    assert lookup["recipients"] == ["someone@unresolvable.example.org"]
    assert lookup["section"] == "msp"

    code, result = ops("set-smarthost", body=SMARTHOST)
    assert code == 0, result
    code, flushed = ops("flush")
    assert code == 0, flushed
    host.wait_for(lambda: len(host.lab.smarthost.messages()) >= 1, 30, "delivery at the sink")
    # Delivered: the two-recipient message. Still held: the one whose domain has no DNS.
    host.wait_for(lambda: ops("queue")[1]["data"]["count"] == 1, 30, "one message left")
    code, left = ops("queue")
    assert left["data"]["messages"][0]["section"] == "msp"

    code, log = ops("log", "--lines", "1000")
    assert code == 0, log
    records = log["data"]["records"]
    deliveries = [r for r in records if r["kind"] == "delivery"]
    refused = [r for r in deliveries
               if r["fields"]["stat"] == "Deferred: Connection refused by mx.ourtest.com."]
    assert refused and refused[0]["fields"]["to"] == "<a@ourtest.com>,<b@ourtest.com>"
    assert refused[0]["fields"]["mailer"] == "esmtp" and refused[0]["host"] == host.name
    sent = [r for r in deliveries if r["fields"]["stat"].startswith("Sent")
            and "smarthost.lab.test" in r["fields"].get("relay", "")]
    assert sent and sent[0]["fields"]["to"] == "<a@ourtest.com>,<b@ourtest.com>"
    summary = log["data"]["summary"]
    assert summary["by_stat"]["Deferred: Connection refused by mx.ourtest.com."] >= 1
    assert summary["sent"] >= 1 and summary["deferred"] >= 1
    assert any(r["kind"] == "received" and r["fields"].get("nrcpts") == "2" for r in records)


def test_host_name_lookup_failure_is_parsed(make_host: Callable[..., LabHost]) -> None:
    """A CentOS-style cf without WorkAroundBrokenAAAA, against DNS that has no AAAA records."""
    host = make_host("centos")
    mc = host.mail_dir / "sendmail.mc"
    mc.write_text(mc.read_text().replace("define(`confBIND_OPTS', `WorkAroundBrokenAAAA')dnl\n",
                                         ""))
    code, result = host.ops("set-smarthost", body=SMARTHOST)
    assert code == 0, result
    host.send_mail(["me@ourtest.com"])
    host.wait_for(lambda: "host name lookup" in host.mailq(), 30, "the lookup failure")
    code, queue = host.ops("queue")
    (message,) = queue["data"]["messages"]
    # mailq cuts the reason to its column width; the maillog has it whole.
    assert message["reason"] == "Deferred: Name server: smarthost.lab.test.: host name lookup"
    code, log = host.ops("log")
    stats = [r["fields"]["stat"] for r in log["data"]["records"] if r["kind"] == "delivery"]
    assert "Deferred: Name server: smarthost.lab.test.: host name lookup failure" in stats


def test_diagnose_on_a_healthy_host(host: LabHost, ops: OpsRunner) -> None:
    code, before = ops("diagnose")
    checks = {c["name"]: c for c in before["data"]["checks"]}
    assert checks["smarthost_smtp"]["ok"] is False
    assert "no smarthost" in checks["smarthost_smtp"]["detail"]
    ops("set-smarthost", body=SMARTHOST)
    code, result = ops("diagnose", "--domain", "ourtest.com", "--public-ip", host.address)
    assert code == 0, result
    checks = {c["name"]: c for c in result["data"]["checks"]}
    assert list(checks) == ["hostname_fqdn", "hosts_file", "mta_running", "config_in_sync",
                            "smarthost_resolves", "smarthost_smtp", "smarthost_tls", "spf"]
    # the sink offers no STARTTLS and tls.mode is "may": smarthost_tls is informational
    assert checks["smarthost_tls"]["ok"] is None, checks["smarthost_tls"]
    assert all(c["ok"] for name, c in checks.items() if name != "smarthost_tls"), checks
    assert checks["hostname_fqdn"]["data"]["fqdn"] == host.fqdn
    assert checks["smarthost_resolves"]["data"]["addresses"] == [host.lab.smarthost.address]
    assert checks["smarthost_smtp"]["data"]["auth"] == ["PLAIN", "LOGIN"]
    assert checks["spf"]["data"]["result"] == "pass"
    code, outside = ops("diagnose", "--domain", "example.net", "--public-ip", host.address)
    spf = next(c for c in outside["data"]["checks"] if c["name"] == "spf")
    assert spf["ok"] is False and spf["data"]["result"] == "fail" and code == 1


def test_diagnose_finds_the_seed_problems(make_host: Callable[..., LabHost]) -> None:
    host = make_host("centos")
    (host.root / "hosts").write_text(f"127.0.0.1 localhost {host.name}\n")
    (host.mail_dir / "sendmail.mc").write_text(
        (host.mail_dir / "sendmail.mc").read_text().replace(
            "dnl define(`SMART_HOST', `smtp.your.provider')dnl",
            "define(`SMART_HOST', `blackhole.lab.test')dnl"))
    start = time.monotonic()
    code, result = host.ops("diagnose", "--domain", "ourtest.com", "--public-ip", "198.51.100.9")
    assert code == 1
    checks = {c["name"]: c for c in result["data"]["checks"]}
    assert checks["hostname_fqdn"]["ok"] is False
    assert checks["hosts_file"]["ok"] is False
    assert checks["config_in_sync"]["ok"] is False
    assert "set the smarthost again" in checks["config_in_sync"]["detail"]
    assert checks["spf"]["ok"] is False
    assert time.monotonic() - start < 60


def test_refusing_smarthost_keeps_mail_queued_with_reason(make_host: Callable[..., LabHost]
                                                          ) -> None:
    host = make_host("debian")
    code, result = host.ops("set-smarthost", body={"host": "closed.lab.test", "port": SINK_PORT})
    assert code == 0, result
    host.send_mail(["me@ourtest.com"])
    code, flushed = host.ops("flush")
    assert code == 0, flushed
    assert flushed["data"]["after"] == 1
    (remaining,) = flushed["data"]["remaining"]
    assert remaining["reason"] == "Deferred: Connection refused by closed.lab.test."
    assert any(d["outcome"] == "deferred" for d in flushed["data"]["deliveries"]), flushed


def test_silent_smarthost_flush_is_time_boxed(make_host: Callable[..., LabHost]) -> None:
    host = make_host("centos")
    code, result = host.ops("set-smarthost", body={"host": "blackhole.lab.test",
                                                   "port": SINK_PORT})
    assert code == 0, result
    host.send_mail(["me@ourtest.com"], subject="into the void", queue_only=True)
    host.wait_for(lambda: len(host.queue_files()) == 1, 30, "the message in the queue")
    start = time.monotonic()
    code, flushed = host.ops("flush", profile={"command_timeout_s": 5})
    took = time.monotonic() - start
    assert code == 1 and flushed["error_kind"] == "timeout", flushed
    assert "did not finish within 5" in flushed["error"]
    assert flushed["data"]["after"] == 1
    assert took < 30

"""``mta.kind = "auto"``: detection facts, profile resolution, the agent (config, ``check``,
routes), ``relayfleet-ops`` and the SSH transport, on fake hosts (no root, no lab).

What a host runs is scripted on the fake as the detection command's output: the facts
``shared.mta.detect_command`` prints on a real host.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.app import create_app
from agent.config import (
    AgentConfig,
    MtaSettings,
    MtaUndetected,
    ProfileResolver,
    load_config,
)
from controller.transports import HostSpec, SshTransport
from shared.cli import run as run_ops
from shared.errors import ConfigError, NotSupported, ValidationError
from shared.mta import LogRequest, NoParams, detect_command, kind_from_facts
from shared.mta_kind import resolve_profile
from shared.testing import FakeExecutor, debian_sendmail_host

TOKEN = "fake-agent-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SENT = ("Dec  2 09:10:07 pbx1 postfix/smtp[1240]: 4F1C2A0B3C: to=<me@ourtest.com>, "
        "relay=smarthost.lab.test[10.77.0.3]:587, delay=602, delays=600/0.01/0.5/1.2, "
        "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4NGq3x6Zlbz9tF)\n")


def runs(host: FakeExecutor, *facts: str) -> FakeExecutor:
    """Script what the detection command finds on ``host`` (no facts: nothing)."""
    host.script(detect_command(), exit_code=0, stdout="".join(f"{f}\n" for f in facts))
    return host


def detections(host: FakeExecutor) -> int:
    """How many times the detection command ran on ``host``."""
    return sum(1 for argv in host.ran("sh") if list(argv) == detect_command())


# -- what decides ------------------------------------------------------------------------

@pytest.mark.parametrize(("output", "kind"), [
    ("postfix-running\nsendmail-configured\n", "postfix"),  # the running MTA wins
    ("sendmail-running\npostfix-configured\n", "sendmail"),
    ("sendmail-configured\n", "sendmail"),  # none runs: the only one configured
    ("postfix-configured\n", "postfix"),
    # both run (a half-done migration): the only one configured decides
    ("postfix-running\nsendmail-running\npostfix-configured\n", "postfix"),
])
def test_the_running_mta_wins_then_the_only_one_configured(output: str, kind: str) -> None:
    assert kind_from_facts(output) == kind


@pytest.mark.parametrize(("output", "says"), [
    ("", "neither sendmail nor Postfix is running or configured"),
    ("postfix-configured\nsendmail-configured\n", "postfix-configured, sendmail-configured"),
    ("postfix-running\nsendmail-running\npostfix-configured\nsendmail-configured\n",
     "postfix-running"),
])
def test_when_it_cannot_tell_it_says_so_and_names_the_fix(output: str, says: str) -> None:
    with pytest.raises(NotSupported) as caught:
        kind_from_facts(output)
    assert says in caught.value.message
    assert "set mta.kind to sendmail or postfix" in caught.value.message


def test_auto_takes_the_detected_kinds_own_settings_and_ignores_the_others() -> None:
    overrides = {"mc": "custom.mc", "main_cf": "custom.cf", "maillog": "/var/log/mail.err"}
    postfix = resolve_profile("auto", "rhel", overrides, lambda: "postfix")
    assert (postfix.kind, postfix.main_cf_path, postfix.maillog) == (
        "postfix", "/etc/postfix/custom.cf", "/var/log/mail.err")
    sendmail = resolve_profile("auto", "debian", overrides, lambda: "sendmail")
    assert (sendmail.kind, sendmail.mc_path) == ("sendmail", "/etc/mail/custom.mc")

    def never() -> str:
        raise AssertionError("a configured kind is not detected")

    assert resolve_profile("postfix", "debian", {}, never).queue_dir == "/var/spool/postfix"
    with pytest.raises(ValidationError, match="not a postfix setting"):
        resolve_profile("postfix", "debian", {"mc": "x.mc"}, never)


# -- the agent's configuration ---------------------------------------------------------------

def write_config(tmp_path: Path, mta: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'token_sha256 = "{"a" * 64}"\n[mta]\n{mta}')
    return path


def test_agent_config_kind_auto_and_postfix(tmp_path: Path) -> None:
    auto = load_config(write_config(tmp_path, 'kind = "auto"\nmc = "custom.mc"\n'
                                              'sasl_passwd = "relay_passwd"\n'))
    assert auto.mta == MtaSettings("auto", "debian", {"mc": "custom.mc",
                                                      "sasl_passwd": "relay_passwd"})
    postfix = load_config(write_config(tmp_path, 'kind = "postfix"\nflavour = "rhel"\n'))
    profile = ProfileResolver(postfix.mta).profile()  # a configured kind: nothing detected
    assert (profile.kind, profile.maillog, profile.reload) == (
        "postfix", "/var/log/maillog", ("postfix", "reload"))
    # the default stays sendmail: agent.toml files written before Postfix mean it
    assert load_config(write_config(tmp_path, "")).mta.kind == "sendmail"


@pytest.mark.parametrize(("mta", "fragment"), [
    ('kind = "exim"\n', "kind"),
    ('kind = "postfix"\nmc = "x.mc"\n', "not a postfix setting"),
    ('kind = "sendmail"\nmain_cf = "x.cf"\n', "not a sendmail setting"),
    # auto checks every setting against the kind that reads it
    ('kind = "auto"\nconfig_dir = "/srv/postfix"\n', "config_dir"),
    ('kind = "auto"\nsurprise = "x"\n', "unknown mta setting"),
])
def test_agent_config_refuses_bad_mta_settings(tmp_path: Path, mta: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(write_config(tmp_path, mta))


def test_auto_detects_once_for_concurrent_first_uses() -> None:
    host = runs(FakeExecutor(), "postfix-running", "sendmail-configured")
    resolver = ProfileResolver(MtaSettings("auto", "debian", {"mc": "custom.mc"}), lambda: host)
    assert detections(host) == 0  # lazily: nothing is asked before the first use
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(resolver.profile().kind))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == ["postfix"] * 8 and resolver.detected == "postfix"
    assert detections(host) == 1


def test_a_failed_detection_says_what_to_fix_and_is_tried_again() -> None:
    host = runs(FakeExecutor())
    resolver = ProfileResolver(MtaSettings("auto"), lambda: host)
    with pytest.raises(MtaUndetected) as caught:
        resolver.profile()
    message = caught.value.message
    assert "neither sendmail nor Postfix" in message
    assert 'set it to "sendmail" or "postfix"' in message and "agent.toml" in message
    runs(host, "sendmail-running")  # the MTA was started
    assert resolver.profile().kind == "sendmail"
    assert detections(host) == 2


def test_check_describes_configured_detected_and_resolved(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, 'kind = "auto"\nflavour = "rhel"\n'))
    host = runs(FakeExecutor(), "postfix-running")
    described = config.describe(lambda: host)
    assert described["mta_kind"] == {"configured": "auto", "detected": "postfix",
                                     "resolved": "postfix"}
    assert described["mta"]["kind"] == "postfix"
    assert described["mta"]["maillog"] == "/var/log/maillog"
    assert described["mta"]["main_cf"] == "main.cf"
    undetected = config.describe(lambda: runs(FakeExecutor()))
    assert undetected["mta_kind"]["resolved"] is None
    assert "neither sendmail nor Postfix" in undetected["mta_kind"]["detection_error"]
    assert undetected["mta"] == {"kind": "auto", "flavour": "rhel"}
    # a configured kind is resolved as configured, whatever runs (check warns)
    sendmail = load_config(write_config(tmp_path, 'kind = "sendmail"\n'))
    described = sendmail.describe(lambda: host)
    assert described["mta_kind"] == {"configured": "sendmail", "detected": "postfix",
                                     "resolved": "sendmail"}
    assert described["mta"]["mc"] == "sendmail.mc"


def test_check_command_prints_the_kinds(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    config = write_config(tmp_path, 'kind = "auto"\n')
    done = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
                          capture_output=True, text=True, check=False)
    # this machine may run either MTA or none: check succeeds and says what it found
    assert done.returncode == 0, done.stderr
    kinds = json.loads(done.stdout)["mta_kind"]
    assert kinds["configured"] == "auto" and kinds["resolved"] == kinds["detected"]
    assert "mta kind: configured auto, detected " in done.stderr


# -- the agent's routes ----------------------------------------------------------------------

def agent_app(host: FakeExecutor, kind: str = "auto") -> Any:
    config = AgentConfig("127.0.0.1", 8587, hashlib.sha256(TOKEN.encode()).hexdigest(),
                         MtaSettings(kind))
    return create_app(config, executor_factory=lambda: host).test_client()


def test_agent_status_reports_the_detected_kind() -> None:
    host = runs(debian_sendmail_host(), "sendmail-running", "sendmail-configured")
    client = agent_app(host)
    for _ in range(2):
        answer = client.get("/v1/status", headers=AUTH)
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["mta"]["kind"] == "sendmail"
    assert detections(host) == 1


def test_agent_auto_on_a_postfix_host_drives_postfix() -> None:
    host = runs(FakeExecutor(), "postfix-running", "sendmail-configured")
    host.add_file("/var/log/mail.log", SENT)
    client = agent_app(host)
    assert "X-Relayfleet-Mta" not in client.get("/v1/health").headers  # not detected yet
    answer = client.get("/v1/log?lines=5", headers=AUTH)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["summary"]["sent"] == 1
    # every answer names the kind, so that the controller learns it from any action
    assert answer.headers["X-Relayfleet-Mta"] == "postfix"
    assert client.get("/v1/health").headers["X-Relayfleet-Mta"] == "postfix"
    assert host.ran("tail", "-n", "5", "/var/log/mail.log")


def test_agent_without_a_detectable_mta_serves_and_says_what_to_fix() -> None:
    host = runs(debian_sendmail_host())
    client = agent_app(host)
    assert client.get("/v1/health").status_code == 200
    for method, path in (("GET", "/v1/status"), ("GET", "/v1/queue"),
                         ("PUT", "/v1/smarthost")):
        answer = client.open(path, method=method, headers=AUTH,
                             json={"host": "relay.example.net"} if method == "PUT" else None)
        doc = answer.get_json()
        assert answer.status_code == 503 and doc["code"] == 503, doc
        assert 'kind is "auto": set it to "sendmail" or "postfix"' in doc["message"]
    assert not host.ran("m4") and not host.ran("mailq")
    runs(host, "sendmail-running")
    assert client.get("/v1/status", headers=AUTH).get_json()["mta"]["kind"] == "sendmail"


# -- relayfleet-ops ----------------------------------------------------------------------------

def test_ops_mta_auto_detects_before_the_operation() -> None:
    host = runs(debian_sendmail_host(), "sendmail-running")
    code, doc = run_ops(["--mta", "auto", "status"], executor=host)
    assert code == 0 and doc["data"]["mta"]["kind"] == "sendmail", doc
    assert list(host.ran()[0]) == detect_command()


def test_ops_mta_auto_that_cannot_tell_fails_with_the_reason() -> None:
    host = runs(debian_sendmail_host())
    code, doc = run_ops(["--mta", "auto", "status"], executor=host)
    assert code == 1 and doc["error_kind"] == "not_supported"
    assert "set mta.kind to sendmail or postfix" in doc["error"]


def test_ops_checks_the_settings_before_touching_the_host() -> None:
    host = debian_sendmail_host()
    code, doc = run_ops(["--mta", "auto", "--profile-json", '{"surprise": 1}', "status"],
                        executor=host)
    assert code == 2 and "surprise" in doc["errors"]
    code, doc = run_ops(["--mta", "postfix", "--profile-json", '{"mc": "x.mc"}', "status"],
                        executor=host)
    assert code == 2 and doc["errors"] == {"mc": ["not a postfix setting"]}
    assert host.commands == []


# -- the SSH transport -------------------------------------------------------------------------

def ssh_transport(host: FakeExecutor, **spec: Any) -> SshTransport:
    """An SSH transport whose executor is the fake host (it never dials)."""
    transport = SshTransport(HostSpec(1, "pbx1", "192.0.2.10", "ssh", **spec), pool=None)
    transport.executor = host  # type: ignore[assignment]
    return transport


def test_ssh_auto_detects_at_first_contact_and_reports_the_kind() -> None:
    host = runs(debian_sendmail_host(), "sendmail-running", "postfix-configured")
    transport = ssh_transport(host, mta_kind="auto", mta_overrides={"main_cf": "main.cf"})
    assert transport.mta_kind is None
    result = transport.run("collect_status", NoParams(), dry_run=False, timeout_s=30)
    assert result.ok and result.data["mta"]["kind"] == "sendmail", result
    assert transport.mta_kind == "sendmail" and detections(host) == 1


def test_ssh_auto_on_a_postfix_host_reads_postfix_settings_only() -> None:
    host = runs(FakeExecutor(), "postfix-running")
    host.add_file("/var/log/mail.err", SENT)
    transport = ssh_transport(host, mta_kind="auto",
                              mta_overrides={"mc": "custom.mc", "maillog": "/var/log/mail.err"})
    result = transport.run("read_log", LogRequest(5), dry_run=False, timeout_s=30)
    assert result.ok and result.data["summary"]["sent"] == 1, result
    assert transport.mta_kind == "postfix"
    assert host.ran("tail", "-n", "5", "/var/log/mail.err")


def test_ssh_auto_reuses_the_kind_it_remembered() -> None:
    host = runs(debian_sendmail_host(), "postfix-running")  # would say postfix if asked
    transport = ssh_transport(host, mta_kind="auto", mta_detected_kind="sendmail")
    result = transport.run("collect_status", NoParams(), dry_run=False, timeout_s=30)
    assert result.ok and transport.mta_kind == "sendmail" and detections(host) == 0


def test_ssh_configured_kind_is_not_detected_and_undetectable_auto_fails() -> None:
    host = runs(debian_sendmail_host())
    transport = ssh_transport(host, mta_kind="sendmail")
    assert transport.run("collect_status", NoParams(), dry_run=False, timeout_s=30).ok
    assert transport.mta_kind == "sendmail" and detections(host) == 0
    with pytest.raises(NotSupported, match=r"set mta\.kind to sendmail or postfix"):
        ssh_transport(host, mta_kind="auto").run("collect_status", NoParams(), dry_run=False,
                                                 timeout_s=30)

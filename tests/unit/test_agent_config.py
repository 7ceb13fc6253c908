"""agent.toml loading and the ``check`` command (files only, no server)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ProfileResolver, load_config
from shared.errors import ConfigError

TOKEN = "t0ken-for-tests-0123456789"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_and_token_compare(tmp_path: Path, token_file: Path) -> None:
    config = load_config(write(tmp_path, f'token_file = "{token_file}"\n[mta]\nflavour = "rhel"\n'))
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 8587)
    assert ProfileResolver(config.mta).profile().maillog == "/var/log/maillog"
    assert config.token_matches(TOKEN) and not config.token_matches(TOKEN + "x")
    assert TOKEN not in json.dumps(config.describe())


def test_token_sha256_and_overrides(tmp_path: Path) -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    config = load_config(write(tmp_path, f'token_sha256 = "{digest}"\nlisten = "[::1]:9000"\n'
                                         '[mta]\nrestart = ["systemctl", "restart", "sendmail"]\n'),
                         listen="127.0.0.1:8600")
    assert config.token_matches(TOKEN) and config.listen_port == 8600
    assert ProfileResolver(config.mta).profile().restart == ("systemctl", "restart", "sendmail")


@pytest.mark.parametrize("text, fragment", [
    ("", "needs token_file"),
    ('token_sha256 = "abc"\n', "64 hexadecimal"),
    ('token_sha256 = "' + "a" * 64 + '"\nlisten = "nope"\n', "ADDR:PORT"),
    ('token_sha256 = "' + "a" * 64 + '"\nsurprise = 1\n', "unknown setting"),
    ('token_sha256 = "' + "a" * 64 + '"\ntls_cert = "/x"\n', "go together"),
    ('token_sha256 = "' + "a" * 64 + '"\n[mta]\nflavour = "suse"\n', "flavour"),
    ('token_sha256 = "' + "a" * 64 + '"\n[mta]\nrestart = "service sendmail restart"\n', "argv"),
    ('token_sha256 = "' + "a" * 64 + '"\n[mta]\nmaillog = "../../etc/shadow"\n', ".."),
    ("this is = = not toml", "not valid TOML"),
])
def test_bad_configs_say_what_to_fix(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_token_file_must_be_private(tmp_path: Path, token_file: Path) -> None:
    token_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_config(write(tmp_path, f'token_file = "{token_file}"\n'))


def test_check_command(tmp_path: Path, token_file: Path) -> None:
    config = write(tmp_path, f'token_file = "{token_file}"\n')
    ok = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and json.loads(ok.stdout)["mta"]["mc"] == "sendmail.mc"
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config",
                          str(tmp_path / "missing.toml")], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "cannot read" in bad.stderr


def test_plain_http_is_the_contracts_name_for_serving_without_tls(
        tmp_path: Path, token_file: Path) -> None:
    body = f'listen = "0.0.0.0:8587"\ntoken_file = "{token_file}"\n'
    assert load_config(write(tmp_path, body + "plain_http = true\n")).insecure_http
    assert load_config(write(tmp_path, body + "insecure_http = true\n")).insecure_http
    with pytest.raises(ConfigError, match="plain_http"):
        load_config(write(tmp_path, body + 'plain_http = "yes"\n'))

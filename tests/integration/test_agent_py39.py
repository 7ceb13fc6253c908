"""The agent on Debian 11's own Python 3.9 (Debian 11 and RHEL 9 ship 3.9): its tests pass.

A Debian 11 tree made by debootstrap from Debian's archive (tests/lab/bullseye.py, cached)
gets a venv of its python3.9 with the agent's dependencies installed from the agent bundle's
wheels (``pip install --no-index``: the bundle's 3.9 wheels are the ones proven here); the
test tools come from PyPI, held to the versions the bundle installed. The installed agent
must import whole and serve its API over TLS, and the agent's unit tests (chosen by
``agent_test_files``) run with pytest in that venv against this source tree, mounted
read-only. Each step runs chrooted in a mount namespace of its own (tests/lab/bullseye.py):
nothing stays mounted afterwards.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.lab.bullseye import bullseye_tree, mount_point, run_in_tree
from tests.lab.services import free_port

# A first run on a machine builds the Debian tree (about a minute), and downloads the
# bundle's 3.9 wheels and the test tools; the agent's tests then take minutes on 3.9: more
# than the suite's 300 s per test.
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "tests" / "unit"
#: the agent's own packages; shared.ssh and shared.remote_shell are the controller's SSH
#: transport (paramiko, and the shell protocol it speaks), never run by an agent
AGENT_PACKAGES = ("agent", "shared")
NOT_THE_AGENTS = ("shared.ssh", "shared.remote_shell")
#: what the agent's dependencies install (import names)
AGENT_DEPENDENCIES = ("flask", "flask_smorest", "cheroot", "marshmallow", "dns", "werkzeug",
                      "tomli")
#: test tools (import name -> distribution name, its range taken from pyproject.toml);
#: cryptography only makes the TLS tests' certificates (the agent does not use it)
TEST_TOOLS = {"pytest": "pytest", "pytest_timeout": "pytest-timeout",
              "hypothesis": "hypothesis", "cryptography": "cryptography"}
#: tests that must be among the chosen ones: a rule that lost them fails here
REQUIRED = ("test_agent_config.py", "test_agent_routes.py", "test_agent_unit.py",
            "test_operations_fake.py", "test_postfix_operations_fake.py")
#: where things are inside the tree while a step runs
WORK, SRC, BUNDLE = "/relayfleet-work", "/relayfleet-src", "/relayfleet-bundle"
CA_FILE = "/relayfleet-ca.crt"
#: the host's proxy settings go in with the steps that reach PyPI
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                   "NO_PROXY")
VENV = f"{WORK}/venv"
STEP_TIMEOUT_S = 1200
#: a warning our own code causes (attributed to a module of ours) fails its test there; one
#: a dependency raises inside itself (a DeprecationWarning of its own on 3.9) does not
OUR_WARNINGS_ARE_ERRORS = r"filterwarnings=error:::(agent|shared|tests)(\.|$)"
#: imports every module of the installed agent but those named in argv; prints what it did
_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import agent, shared
names = [module.name for package in (agent, shared)
         for module in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
         if module.name not in sys.argv[1:]]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": sorted(names), "file": shared.__file__,
                  "version": shared.__version__}))
"""


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (absolute imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _agent_side(module: str) -> bool:
    top = module.split(".", maxsplit=1)[0]
    if top in AGENT_PACKAGES:
        return not any(module == no or module.startswith(no + ".") for no in NOT_THE_AGENTS)
    return (module == "__future__" or top in sys.stdlib_module_names
            or top in AGENT_DEPENDENCIES or top in TEST_TOOLS)


def agent_test_files() -> list[Path]:
    """The unit tests meant for the agent: named test_agent*.py or importing agent/shared,
    and importing nothing but the standard library, the agent (not shared.ssh), its
    dependencies, the test tools and other chosen test modules."""
    candidates = {path: _imports(path) for path in sorted(UNIT.glob("test_*.py"))}
    chosen = {path for path, modules in candidates.items()
              if path.name.startswith("test_agent")
              or any(m.split(".")[0] in AGENT_PACKAGES for m in modules)}
    while True:  # a test module importing another test module goes only with it
        names = {f"tests.unit.{path.stem}" for path in chosen}
        keep = {path for path in chosen
                if all(_agent_side(m) or m in names for m in candidates[path])}
        if keep == chosen:
            return sorted(chosen)
        chosen = keep


def _is_fixture(node: ast.FunctionDef) -> bool:
    return any(ast.unparse(d.func if isinstance(d, ast.Call) else d) == "pytest.fixture"
               for d in node.decorator_list)


def _arguments(node: ast.FunctionDef) -> set[str]:
    return {arg.arg for arg in [*node.args.posonlyargs, *node.args.args,
                                *node.args.kwonlyargs]}


def _parametrized(node: ast.FunctionDef) -> set[str]:
    """The argument names ``@pytest.mark.parametrize`` gives the function."""
    names: set[str] = set()
    for deco in node.decorator_list:
        if (isinstance(deco, ast.Call) and ast.unparse(deco.func) == "pytest.mark.parametrize"
                and deco.args and isinstance(deco.args[0], ast.Constant)):
            names.update(name.strip() for name in str(deco.args[0].value).split(","))
    return names


def needing_the_conftest(files: list[Path]) -> list[str]:
    """Node ids of the chosen files' tests that use a fixture of tests/conftest.py (the lab
    and the controller's: not loaded there), directly or through the file's own fixtures
    (a fixture of the file's own, or a parametrized argument, of the same name is not)."""
    conftest = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    outside = {node.name for node in conftest.body
               if isinstance(node, ast.FunctionDef) and _is_fixture(node)}
    node_ids = []
    for path in files:
        tree = ast.parse(path.read_text())
        functions = [(None, node) for node in tree.body if isinstance(node, ast.FunctionDef)]
        functions += [(cls.name, node) for cls in tree.body if isinstance(cls, ast.ClassDef)
                      for node in cls.body if isinstance(node, ast.FunctionDef)]
        needs = outside - {node.name for _, node in functions if _is_fixture(node)}
        while True:  # the file's fixtures that use them need them too
            more = {node.name for _, node in functions
                    if _is_fixture(node) and _arguments(node) & needs} - needs
            if not more:
                break
            needs |= more
        for cls, node in functions:
            if node.name.startswith("test") and (_arguments(node) - _parametrized(node)) & needs:
                parts = [str(path.relative_to(ROOT)), *([cls] if cls else []), node.name]
                node_ids.append("::".join(parts))
    return node_ids


def _requirement(name: str, project: dict[str, Any]) -> str:
    """``name``'s requirement as pyproject.toml pins it (in any list of it)."""
    for requirements in [project["dependencies"], *project["optional-dependencies"].values()]:
        for line in requirements:
            if re.match(rf"{re.escape(name)}\s*(\[|[<>=!~;]|$)", line):
                return str(line)
    raise AssertionError(f"{name} is not in pyproject.toml")


def _build_bundle_wheels(out: Path) -> tuple[str, Path]:
    """The agent bundle built for Python 3.9 and extracted: its version and wheels."""
    from controller.agent_bundle import build_bundle

    bundle = build_bundle(out / "dist", pythons=("3.9",))
    with tarfile.open(bundle.path) as archive:
        archive.extractall(out / "extracted", filter="data")
    wheels = out / "extracted" / f"relayfleet-agent-{bundle.version}" / "wheels"
    assert any(wheels.glob("relayfleet_agent-*.whl")), sorted(wheels.iterdir())
    return bundle.version, wheels


#: asks the agent serving on 127.0.0.1:argv[1] over TLS (trusting argv[2] only) for its
#: health, then for its status without the token; prints both answers
_PROBE = """
import json, ssl, sys, time, urllib.error, urllib.request
base = "https://127.0.0.1:%s/v1/" % sys.argv[1]
context = ssl.create_default_context(cafile=sys.argv[2])
deadline = time.monotonic() + 60
while True:
    try:
        health = json.load(urllib.request.urlopen(base + "health", context=context, timeout=5))
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
try:
    urllib.request.urlopen(base + "status", context=context, timeout=5)
    unauthorised = 200
except urllib.error.HTTPError as exc:
    unauthorised = exc.code
print(json.dumps({"health": health, "status_without_token": unauthorised}))
"""


def _serving_config(work: Path) -> int:
    """agent.toml, token, certificate and key for the agent in ``work`` (seen in the tree
    under WORK), as install.sh makes them (make-cert.sh); returns the port it listens on."""
    port = free_port()
    subprocess.run(["sh", str(ROOT / "deploy/agent/make-cert.sh"), str(work / "agent.crt"),
                    str(work / "agent.key"), "localhost", "127.0.0.1"], check=True, timeout=60)
    token = work / "agent.token"
    token.write_text(secrets.token_urlsafe(32))
    token.chmod(0o600)
    (work / "agent.toml").write_text(
        f'listen = "127.0.0.1:{port}"\ntoken_file = "{WORK}/agent.token"\n'
        f'tls_cert = "{WORK}/agent.crt"\ntls_key = "{WORK}/agent.key"\n'
        '[mta]\nkind = "auto"\n')
    return port


def _wheel_modules() -> list[str]:
    """The modules the agent's wheel holds: agent and shared but shared.testing (and those
    the import check leaves out)."""
    names = []
    for package in AGENT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name not in AGENT_PACKAGES and not name.startswith("shared.testing") \
                    and name not in NOT_THE_AGENTS:
                names.append(name)
    return sorted(names)


def _host_ca_file() -> Path:
    """The CA bundle this host's pip trusts (a TLS-inspecting proxy's CA may be in it only)."""
    for candidate in (os.environ.get("PIP_CERT"), ssl.get_default_verify_paths().cafile,
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise AssertionError("no CA bundle on this host: apt-get install ca-certificates")


def _collected_here(arguments: list[str]) -> int:
    """How many tests pytest selects with ``arguments`` on this (the controller's) Python."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--noconftest", "--collect-only", "-q", "-o", "addopts=",
                           *arguments], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, check=False)
    found = re.search(r"^(\d+)(?:/\d+)? tests? collected", proc.stdout, re.M)
    assert proc.returncode == 0 and found, proc.stdout[-3000:] + proc.stderr[-3000:]
    return int(found.group(1))


def test_the_agents_tests_pass_on_debian_11_python_3_9(tmp_path: Path) -> None:
    files = agent_test_files()
    names = [path.name for path in files]
    assert set(REQUIRED) <= set(names), names
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tools = [_requirement(dist, project) for dist in TEST_TOOLS.values()]

    tree = bullseye_tree()
    for point in (WORK, SRC, BUNDLE):
        mount_point(tree, point.lstrip("/"))
    mount_point(tree, CA_FILE.lstrip("/"), file=True)
    work = tmp_path / "work"
    work.mkdir()
    bundle_version, wheels = _build_bundle_wheels(tmp_path / "bundle")
    binds = [(work, WORK, True), (ROOT, SRC, False), (wheels, BUNDLE, False),
             (_host_ca_file(), CA_FILE, False)]
    env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CERT": CA_FILE,
           "PYTHONDONTWRITEBYTECODE": "1",
           **{name: os.environ[name] for name in PROXY_VARIABLES if name in os.environ}}

    def step(what: str, script: str, *args: str) -> str:
        proc = run_in_tree(tree, ["sh", "-ec", script, "step", *args], binds=binds, env=env,
                           timeout=STEP_TIMEOUT_S)
        assert proc.returncode == 0, (f"{what} exited {proc.returncode}:\n"
                                      f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc.stdout

    step("the venv", 'python3.9 -m venv "$1"', VENV)
    version = step("the interpreter", f'"{VENV}/bin/python" -c "import sys; '
                   'print(\'%d.%d\' % sys.version_info[:2])"').strip()
    assert version == "3.9", version
    # The agent and everything it needs, from the bundle only.
    step("installing the agent from the bundle",
         f'"{VENV}/bin/pip" install -q --no-index --find-links "$1" relayfleet-agent', BUNDLE)
    # The test tools from PyPI, never moving what the bundle installed.
    step("installing the test tools",
         f'"{VENV}/bin/pip" freeze --exclude-editable > "$1"; '
         f'shift; "{VENV}/bin/pip" install -q --constraint {WORK}/bundle.txt "$@"',
         f"{WORK}/bundle.txt", *tools)
    # The installed agent imports whole (from its wheel: outside the source tree).
    imported = step("importing the installed agent",
                     f'cd / && script=$1 && shift && "{VENV}/bin/python" -c "$script" "$@" && '
                     f'"{VENV}/bin/relayfleet-agent" --help >/dev/null',
                     _IMPORT_ALL, *NOT_THE_AGENTS)
    facts = json.loads(imported.strip().splitlines()[-1])
    assert facts["file"].startswith(f"{VENV}/lib/python3.9/site-packages/"), facts
    assert facts["version"] == bundle_version, facts
    assert facts["modules"] == _wheel_modules(), facts
    # The installed agent serves its API over TLS (cheroot) on 3.9; this tree has no MTA.
    port = _serving_config(work)
    served = step("serving", f'"{VENV}/bin/relayfleet-agent" serve --config {WORK}/agent.toml '
                  f'>{WORK}/agent.log 2>&1 & agent=$!; trap \'kill $agent\' EXIT; '
                  f'"{VENV}/bin/python" -c "$1" "$2" {WORK}/agent.crt', _PROBE, str(port))
    answers = json.loads(served.strip().splitlines()[-1])
    assert answers == {"health": {"status": "ok", "version": bundle_version},
                       "status_without_token": 401}, (answers, (work / "agent.log").read_text())

    # The agent's unit tests against this source tree (read-only: no caches written), but
    # those that need the lab's or the controller's fixtures.
    deselected = needing_the_conftest(files)
    arguments = [*(str(path.relative_to(ROOT)) for path in files),
                 *(f"--deselect={node_id}" for node_id in deselected)]
    report = step("pytest", f'cd {SRC} && HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis '
                  f'"{VENV}/bin/python" -m pytest -p no:cacheprovider --noconftest -q '
                  '-o addopts="-ra --strict-markers" "$@"', "-o", OUR_WARNINGS_ARE_ERRORS,
                  *arguments)
    summary = report.strip().splitlines()[-1]
    passed = re.search(r"^(\d+) passed", summary)
    # every test selected here passed there: none skipped, none lost to an import error
    # (nor to a warning of ours: errors, above; a dependency's own warnings may be counted)
    assert passed and not re.search(r"failed|error|skipped", summary), report[-4000:]
    assert int(passed.group(1)) == _collected_here(arguments), summary
    print(f"Python {version} (Debian 11): {passed.group(1)} tests passed in {len(files)} files "
          f"({', '.join(names)}; left to the controller's Python: {', '.join(deselected)}); "
          f"the installed agent {facts['version']} imported {len(facts['modules'])} modules")

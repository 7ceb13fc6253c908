"""The catalogue of actions: everything relayfleet knows about each thing it can do to a host.

One :class:`Action` per action, in :data:`ACTIONS`, says how its request is checked (the
agent's request schema, then a typed request built once at the edge), stored (its JSON
form, with secrets kept apart), run (:class:`~shared.mta.MtaOperations`), carried to an
agent (HTTP method, path, body or query), answered (the agent's result schema and the one
function that builds that document) and learnt from (the host's last known state).

The agent's routes, both controller transports, the controller's job checks and
``relayfleet-ops`` all read this table, so an action name appears only here. A request
travels typed: parsed once where it enters (API, CLI, stored job), then passed as is.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from marshmallow import Schema
from marshmallow import ValidationError as SchemaError

from shared import schemas as s
from shared.errors import OperationError, ValidationError
from shared.mta import (
    DiagnoseRequest,
    FlushRequest,
    HostnameRequest,
    LogRequest,
    MtaOperations,
    NoParams,
)
from shared.profile import PROFILE_KINDS
from shared.results import OperationResult, Step
from shared.validation import SmarthostRequest, parse_smarthost_request, refusal

R = TypeVar("R")
T = TypeVar("T")
if TYPE_CHECKING:
    from typing import TypeAlias  # novermin -- read by type checkers only (3.10+)
#: a typed request of any action (quoted: the agent runs on Python 3.9, which has no X | Y)
Request: TypeAlias = ("SmarthostRequest | FlushRequest | DiagnoseRequest | LogRequest"
                      " | HostnameRequest | NoParams")
#: the keys of an answer document that are the operation's outcome rather than its data
OUTCOME_KEYS = ("ok", "error", "error_kind", "steps", "changed", "rolled_back")
#: what a result may teach about a host's last known state
HOST_STATE_KEYS = ("queue_count", "queue_oldest_age_s", "smarthost", "config_in_sync",
                   "mta_running", "mta_detected_kind")


def _fields(request: Any) -> dict[str, Any]:
    """A dataclass request's JSON form: its fields."""
    return asdict(request)


@dataclass(frozen=True)
class HttpRoute:
    """How the controller reaches an action on a host's agent."""

    method: str
    path: str
    #: where the request travels: "json" (body), "query" (string), or None (no input)
    location: str | None = None


@functools.cache
def schema_instance(schema: type[Schema]) -> Schema:
    """One instance of a request schema, shared (building one per request cost more than
    the load; a schema keeps no state between loads)."""
    return schema()


class RequestRules(Generic[R]):
    """How a job action's request is checked, stored and rebuilt: the same for an action a
    host runs (:class:`Action`) and one the controller's worker runs (:class:`WorkerAction`)."""

    name: str
    params_schema: type[Schema]
    build: Callable[[dict[str, Any]], R]
    to_json: Callable[[R], dict[str, Any]]
    secret_paths: tuple[tuple[str, ...], ...]
    #: the least role that may start it as a job
    role: str

    def parse(self, data: object) -> R:
        """Check a request (a JSON object) with the action's schema; return it typed."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValidationError.for_field("body", "must be a JSON object")
        if "dry_run" in data:
            # dry_run is how to run a request, not part of it: never let it pass silently
            raise ValidationError.for_field("dry_run", "is not part of the request; "
                                                       "ask for a dry run separately")
        try:
            loaded = schema_instance(self.params_schema).load(data)
        except SchemaError as exc:
            raise refusal("request", s.flatten_errors(exc.messages)) from None
        return self.from_loaded(loaded)

    def from_loaded(self, loaded: Mapping[str, Any]) -> R:
        """The typed request from what ``params_schema`` loaded (``dry_run`` is left out)."""
        return self.build({key: value for key, value in loaded.items() if key != "dry_run"})

    def split(self, request: R) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The request's JSON form as (public part, secret part or None) for storage."""
        public = copy.deepcopy(self.to_json(request))
        secret: dict[str, Any] = {}
        for path in self.secret_paths:
            parent = _walk(public, path[:-1])
            if parent is not None and path[-1] in parent:
                secret[path[-1]] = parent.pop(path[-1])
        return public, secret or None

    def join(self, public: Mapping[str, Any], secret: Mapping[str, Any] | None) -> dict[str, Any]:
        """The JSON form again from its stored public and secret parts."""
        joined = copy.deepcopy(dict(public))
        for path in self.secret_paths:
            if secret and path[-1] in secret:
                parent = joined
                for key in path[:-1]:
                    parent = parent.setdefault(key, {})
                parent[path[-1]] = secret[path[-1]]
        return joined

    def stored(self, public: Mapping[str, Any], secret: Mapping[str, Any] | None) -> R:
        """Rebuild (and check again) the typed request from its stored parts."""
        return self.parse(self.join(public, secret))


@dataclass(frozen=True)
class Action(RequestRules[R]):
    """One action: its request, how it runs and travels, its answer, what it teaches."""

    name: str
    #: ``relayfleet-ops`` sub-command
    command: str
    summary: str
    #: the agent's request schema (for changes it also carries ``dry_run``)
    params_schema: type[Schema]
    #: builds the typed request from what ``params_schema`` loaded (without ``dry_run``)
    build: Callable[[dict[str, Any]], R]
    #: calls the operation (the SSH transport, the agent and ``relayfleet-ops`` use it)
    operation: Callable[[MtaOperations, R, bool], OperationResult]
    route: HttpRoute
    #: the agent's answer schema, and the one function building that document
    result_schema: type[Schema]
    answer: Callable[[OperationResult], dict[str, Any]]
    #: (status, result data, dry_run) -> a subset of HOST_STATE_KEYS
    learn: Callable[[str, Mapping[str, Any], bool], dict[str, Any]]
    #: the request's JSON form (secrets included)
    to_json: Callable[[R], dict[str, Any]] = _fields
    #: paths in that JSON form that are secret: stored apart, keyed by their last name
    secret_paths: tuple[tuple[str, ...], ...] = ()
    #: changes the host: takes the change lock and has a dry run
    changes_host: bool = False
    #: may be run as a controller job
    job: bool = True
    #: params that name one host (fix_hostname's fqdn), and what a job over several hosts
    #: gives instead: a job giving one of them targets one host
    one_host_params: Mapping[str, str] = field(default_factory=dict)
    role: str = "operator"

    def run(self, ops: MtaOperations, request: R, *, dry_run: bool = False) -> OperationResult:
        """Run the action on a host through its operations."""
        if dry_run and not self.changes_host:
            raise OperationError(f"{self.name} has no dry run")
        result = self.operation(ops, request, dry_run)
        # Results are named by the action that asked for them, wherever they ran.
        result.operation = self.name
        return result

    def http_input(self, request: R, dry_run: bool) -> dict[str, Any] | None:
        """The body or query that carries ``request`` to the agent."""
        if self.route.location is None:
            return None
        data = self.to_json(request)
        if self.changes_host:
            data["dry_run"] = dry_run
        return data

    def document(self, result: OperationResult) -> dict[str, Any]:
        """The agent's answer document for ``result``, exactly as the agent sends it."""
        return dict(self.result_schema().dump(self.answer(result)))


@dataclass(frozen=True)
class WorkerAction(RequestRules[R]):
    """An action the controller's worker runs itself, over the host's SSH login, rather
    than an MTA operation a host runs: no agent route, no ``relayfleet-ops`` command (the
    controller maps its name to the code that runs it: ``controller.lanes.WORKER_RUNNERS``)."""

    name: str
    summary: str
    params_schema: type[Schema]
    build: Callable[[dict[str, Any]], R]
    #: the schema of a host's result data (published in the controller's OpenAPI)
    result_schema: type[Schema]
    learn: Callable[[str, Mapping[str, Any], bool], dict[str, Any]]
    to_json: Callable[[R], dict[str, Any]] = _fields
    secret_paths: tuple[tuple[str, ...], ...] = ()
    #: changes the host (has a dry run)
    changes_host: bool = True
    role: str = "operator"
    one_host_params: Mapping[str, str] = field(default_factory=dict)
    #: the shortest time box per host a job may give it (its default, too)
    min_timeout_s: int | None = None


#: install_agent's shortest time box per host: install.sh builds a virtualenv and may wait
#: for the new agent's health and then the old one's (30 s each) before it rolls back; a
#: box cut shorter leaves the host half installed
INSTALL_MIN_TIMEOUT_S = 300


@dataclass(frozen=True)
class InstallAgentRequest:
    """install_agent: the bundle's version (None: the newest), the agent's port, and
    whether to replace the token of an agent already installed."""

    version: str | None = None
    port: int = s.DEFAULT_AGENT_PORT
    rotate_token: bool = False


def _walk(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    for key in path:
        inner = doc.get(key)
        if not isinstance(inner, dict):
            return None
        doc = inner
    return doc


def result_from_document(action: str, doc: Mapping[str, Any]) -> OperationResult:
    """An agent answer as a result: outcome keys become the outcome, the rest its data."""
    return OperationResult(
        action, ok=bool(doc.get("ok", True)), steps=[Step(**step) for step in doc.get("steps", [])],
        data={key: value for key, value in doc.items() if key not in OUTCOME_KEYS},
        changed=bool(doc.get("changed", False)), rolled_back=bool(doc.get("rolled_back", False)),
        error=doc.get("error"), error_kind=doc.get("error_kind"))


# -- answers ------------------------------------------------------------------------------

def _outcome(result: OperationResult) -> dict[str, Any]:
    return {"ok": result.ok, "error": result.error, "error_kind": result.error_kind,
            "steps": [step.to_dict() for step in result.steps]}


def _data(result: OperationResult) -> dict[str, Any]:
    return result.data


def _change_answer(result: OperationResult) -> dict[str, Any]:
    """A change's answer (ChangeResultSchema): mta_running, restored and not_restored say
    what state a rollback left the host in."""
    data = result.data
    return {**_outcome(result), "changed": result.changed, "diff": data.get("diff", ""),
            "smarthost": data.get("smarthost"), "config_in_sync": data.get("config_in_sync", False),
            "rolled_back": result.rolled_back, "dry_run": bool(data.get("dry_run")),
            "backup": data.get("backup"), "mta_running": data.get("mta_running"),
            "restored": list(data.get("restored", [])),
            "not_restored": list(data.get("not_restored", [])),
            **_delivery_answer(data)}


def _delivery_answer(data: Mapping[str, Any]) -> dict[str, Any]:
    """The delivery probe's part of an answer (``verify``): absent when none ran."""
    if "delivery" not in data:
        return {}
    return {"delivery": data["delivery"], "delivery_verified": data.get("delivery_verified")}


def _flush_answer(result: OperationResult) -> dict[str, Any]:
    """A flush's answer (FlushResultSchema), with its delivery probe if any."""
    data = result.data
    return {**_outcome(result), **{key: data[key] for key in
                                   ("before", "after", "deliveries", "remaining")},
            **_delivery_answer(data)}


def _outcome_and(*keys: str) -> Callable[[OperationResult], dict[str, Any]]:
    def answer(result: OperationResult) -> dict[str, Any]:
        return {**_outcome(result), **{key: result.data[key] for key in keys}}
    return answer


# -- what results teach about a host ---------------------------------------------------------

def _learn_nothing(status: str, data: Mapping[str, Any], dry_run: bool) -> dict[str, Any]:
    return {}


def _learn_change(status: str, data: Mapping[str, Any], dry_run: bool) -> dict[str, Any]:
    # A change re-reads the configuration after whatever happened (done, refused, rolled
    # back), so its answer is the host's smarthost now; a dry run reads nothing after.
    if dry_run or "smarthost" not in data:
        return {}
    return {"smarthost": data["smarthost"], "config_in_sync": data.get("config_in_sync")}


def _learn_flush(status: str, data: Mapping[str, Any], dry_run: bool) -> dict[str, Any]:
    return {} if data.get("after") is None else {"queue_count": data["after"]}


def _learn_status(status: str, data: Mapping[str, Any], dry_run: bool) -> dict[str, Any]:
    if status != "succeeded":
        return {}
    mta = data.get("mta") or {}
    queue = data.get("queue") or {}
    learnt = {"queue_count": queue.get("count"), "queue_oldest_age_s": queue.get("oldest_age_s"),
              "smarthost": data.get("smarthost"), "config_in_sync": data.get("config_in_sync"),
              "mta_running": mta.get("running")}
    if mta.get("kind") in PROFILE_KINDS:
        # the kind the host runs as (an agent configured "auto" reports what it detected)
        learnt["mta_detected_kind"] = mta["kind"]
    return learnt


# -- requests ---------------------------------------------------------------------------------

def _smarthost_json(request: SmarthostRequest) -> dict[str, Any]:
    doc: dict[str, Any] = {"host": request.host, "port": request.port, "mx": request.mx,
                           "mailer": request.mailer}
    if request.auth is not None:
        doc["auth"] = {"username": request.auth.username, "password": request.auth.password}
    doc["tls"] = asdict(request.tls_policy)
    if request.masquerade is not None:
        doc["masquerade"] = asdict(request.masquerade)
    if request.verify is not None:
        doc["verify"] = request.verify.to_json()
    return doc


def _no_params(loaded: dict[str, Any]) -> NoParams:
    return NoParams()


def _no_json(request: NoParams) -> dict[str, Any]:
    return {}


def _build_flush(loaded: dict[str, Any]) -> FlushRequest:
    return FlushRequest(**loaded)


def _flush_json(request: FlushRequest) -> dict[str, Any]:
    doc: dict[str, Any] = {"reset_host_status": request.reset_host_status,
                           "queue_id": request.queue_id, "recipient": request.recipient,
                           "sender": request.sender}
    if request.verify is not None:
        doc["verify"] = request.verify.to_json()
    return doc


def _build_diagnose(loaded: dict[str, Any]) -> DiagnoseRequest:
    return DiagnoseRequest(**loaded)


def _build_log(loaded: dict[str, Any]) -> LogRequest:
    return LogRequest(**loaded)


def _build_hostname(loaded: dict[str, Any]) -> HostnameRequest:
    return HostnameRequest(**loaded)


def _build_install_agent(loaded: dict[str, Any]) -> InstallAgentRequest:
    return InstallAgentRequest(**loaded)


# -- the catalogue ----------------------------------------------------------------------------

_CATALOGUE: tuple[Action[Any], ...] = (
    Action[SmarthostRequest](
        name="set_smarthost", command="set-smarthost",
        summary="point outbound mail at a smarthost",
        params_schema=s.SmarthostRequestSchema, build=parse_smarthost_request,
        operation=lambda ops, request, dry_run: ops.set_smarthost(request, dry_run=dry_run),
        route=HttpRoute("PUT", "/v1/smarthost", "json"),
        result_schema=s.ChangeResultSchema, answer=_change_answer, learn=_learn_change,
        to_json=_smarthost_json, secret_paths=(("auth", "password"),), changes_host=True),
    Action[NoParams](
        name="remove_smarthost", command="remove-smarthost", summary="go back to direct delivery",
        params_schema=s.DryRunSchema, build=_no_params,
        operation=lambda ops, _request, dry_run: ops.remove_smarthost(dry_run=dry_run),
        route=HttpRoute("DELETE", "/v1/smarthost", "json"),
        result_schema=s.ChangeResultSchema, answer=_change_answer, learn=_learn_change,
        to_json=_no_json, changes_host=True),
    Action[FlushRequest](
        name="flush_queue", command="flush", summary="run the queue now",
        params_schema=s.FlushRequestSchema, build=_build_flush,
        operation=lambda ops, request, _dry_run: ops.queue_flush(request),
        route=HttpRoute("POST", "/v1/queue/flush", "json"),
        result_schema=s.FlushResultSchema, answer=_flush_answer, learn=_learn_flush,
        to_json=_flush_json),
    Action[NoParams](
        name="collect_status", command="status",
        summary="hostname, MTA, smarthost, queue and /etc/hosts in one look",
        params_schema=s.StrictSchema, build=_no_params,
        operation=lambda ops, _request, _dry_run: ops.status(),
        route=HttpRoute("GET", "/v1/status"),
        result_schema=s.StatusSchema, answer=_data, learn=_learn_status, to_json=_no_json),
    Action[DiagnoseRequest](
        name="diagnose", command="diagnose", summary="run the delivery checklist",
        params_schema=s.DiagnoseRequestSchema, build=_build_diagnose,
        operation=lambda ops, request, _dry_run: ops.diagnose(domain=request.domain,
                                                              public_ip=request.public_ip),
        route=HttpRoute("POST", "/v1/diagnose", "json"),
        result_schema=s.DiagnoseSchema, answer=_outcome_and("checks"), learn=_learn_nothing),
    Action[LogRequest](
        name="read_log", command="log", summary="parse the tail of the maillog",
        params_schema=s.LogQuerySchema, build=_build_log,
        operation=lambda ops, request, _dry_run: ops.read_log(request.lines),
        route=HttpRoute("GET", "/v1/log", "query"),
        result_schema=s.LogSchema, answer=_data, learn=_learn_nothing),
    Action[HostnameRequest](
        name="fix_hostname", command="fix-hostname",
        summary="make the host's name fully qualified (/etc/hosts), as relays expect",
        params_schema=s.HostnameRequestSchema, build=_build_hostname,
        operation=lambda ops, request, dry_run: ops.fix_hostname(request, dry_run=dry_run),
        route=HttpRoute("POST", "/v1/hostname", "json"),
        result_schema=s.ChangeResultSchema, answer=_change_answer, learn=_learn_change,
        changes_host=True,
        one_host_params={"fqdn": "give domain to qualify each host's own short name"}),
    # A read the agent and relayfleet-ops offer but jobs do not (collect_status covers it).
    Action[NoParams](
        name="read_smarthost", command="read-smarthost",
        summary="show the smarthost in sendmail.mc and sendmail.cf",
        params_schema=s.StrictSchema, build=_no_params,
        operation=lambda ops, _request, _dry_run: ops.read_smarthost(),
        route=HttpRoute("GET", "/v1/smarthost"),
        result_schema=s.SmarthostReadSchema, answer=_data, learn=_learn_nothing,
        to_json=_no_json, job=False),
    Action[NoParams](
        name="queue_list", command="queue", summary="list queued messages",
        params_schema=s.StrictSchema, build=_no_params,
        operation=lambda ops, _request, _dry_run: ops.queue_list(),
        route=HttpRoute("GET", "/v1/queue"),
        result_schema=s.QueueSchema, answer=_data, learn=_learn_nothing,
        to_json=_no_json),
)

#: the actions a controller's worker runs itself (over SSH), not the host's MTA
_WORKER_CATALOGUE: tuple[WorkerAction[Any], ...] = (
    WorkerAction[InstallAgentRequest](
        name="install_agent",
        summary="install or upgrade the relayfleet agent over SSH, then manage the host "
                "through it",
        params_schema=s.InstallAgentRequestSchema, build=_build_install_agent,
        result_schema=s.InstallAgentResultSchema, learn=_learn_nothing,
        # installing software as root and replacing how the host is reached: an admin's call
        role="admin", min_timeout_s=INSTALL_MIN_TIMEOUT_S),
)

#: every action a host runs (agent routes, relayfleet-ops commands), by name
ACTIONS: Mapping[str, Action[Any]] = {action.name: action for action in _CATALOGUE}
#: the actions the controller's worker runs itself, by name
WORKER_ACTIONS: Mapping[str, WorkerAction[Any]] = {action.name: action
                                                   for action in _WORKER_CATALOGUE}
if TYPE_CHECKING:  # (an alias made only for the type checker: the agent runs on 3.9)
    #: what a controller job may run: a host's action or a worker's
    JobAction = Action[Any] | WorkerAction[Any]
_JOBS: Mapping[str, JobAction] = {
    **{action.name: action for action in _CATALOGUE if action.job}, **WORKER_ACTIONS}
#: the actions a controller job may run, in the order the API lists them
JOB_ACTIONS: tuple[str, ...] = tuple(_JOBS)
#: the actions that change a host (dry run; a host's change takes its change lock)
CHANGE_ACTIONS: tuple[str, ...] = tuple(name for name, action in _JOBS.items()
                                        if action.changes_host)


def _lookup(table: Mapping[str, T], name: str) -> T:
    """``table[name]``, or a refusal naming the actions there are."""
    action = table.get(name)
    if action is None:
        raise ValidationError.for_field("action", f"unknown action {name!r}; one of "
                                                  f"{', '.join(table)}")
    return action


def action_named(name: str) -> Action[Any]:
    """The catalogue entry of the host action ``name``."""
    return _lookup(ACTIONS, name)


def job_action(name: str) -> JobAction:
    """The catalogue entry of a job action (a host's or a worker's)."""
    return _lookup(_JOBS, name)


def min_timeout_s(name: str) -> int | None:
    """The shortest time box per host a job of action ``name`` may have (None: any)."""
    action = job_action(name)
    return action.min_timeout_s if isinstance(action, WorkerAction) else None


def params_summary() -> str:
    """Each job action's params in one line (``set_smarthost: {host, port?, ...}``)."""
    described = []
    for name in JOB_ACTIONS:
        keys = [key + ("" if field.required else "?")
                for key, field in job_action(name).params_schema().fields.items()
                if key != "dry_run"]
        if keys:
            described.append(f"{name}: {{{', '.join(keys)}}}")
    return "; ".join([*described, "the others: {}"])


def result_component_name(name: str) -> str:
    """The OpenAPI component an action's result schema is published as (SetSmarthostResult)."""
    return "".join(part.capitalize() for part in name.split("_")) + "Result"

"""The seed story's checklist as machine checks, run through an executor.

Every fact about the host comes through the :class:`~shared.executor.Executor`, with
tools an old CentOS 6 box has (:mod:`.hosts`). The SMTP probe opens its TCP connection
*from the host* (:mod:`.smtp`). The SPF check (:mod:`.spf`) asks DNS with dnspython from
wherever this code runs, using the name servers of the host's ``/etc/resolv.conf``
(loopback ones only when the executor is local; :mod:`.resolver`). :func:`run_checks`
(:mod:`.checklist`) runs them all in order.

A :class:`Check` has ``ok`` True (fine), False (something to fix, or could not be
confirmed) or None (skipped: not applicable, e.g. SPF when no domain was given).
"""

from shared.diagnose.check import COMMAND_TIMEOUT_S, Check
from shared.diagnose.checklist import NO_SMARTHOST, run_checks, validate_diagnose_input
from shared.diagnose.hosts import (
    ALIVE_SCRIPT,
    HOSTNAME_COMMANDS,
    HOSTS_FILE,
    alive_command,
    check_hostname,
    check_hosts_file,
    check_mta_running,
    check_resolves,
    hostname_check,
    hosts_file_check,
    hosts_file_problems,
    mta_running_check,
    not_qualified_reason,
    short_name,
)
from shared.diagnose.resolver import (
    MAX_NAMESERVERS,
    RESOLV_CONF,
    DnsPythonResolver,
    DnsTempError,
    TxtAResolver,
    resolver_nameservers,
)
from shared.diagnose.smtp import check_smtp
from shared.diagnose.spf import (
    SPF_LOOKUP_LIMIT,
    SPF_MX_LIMIT,
    SPF_RESULTS,
    SPF_VOID_LIMIT,
    SpfResult,
    check_spf,
    spf_covers,
)

__all__ = [
    "ALIVE_SCRIPT",
    "COMMAND_TIMEOUT_S",
    "HOSTNAME_COMMANDS",
    "HOSTS_FILE",
    "MAX_NAMESERVERS",
    "NO_SMARTHOST",
    "RESOLV_CONF",
    "SPF_LOOKUP_LIMIT",
    "SPF_MX_LIMIT",
    "SPF_RESULTS",
    "SPF_VOID_LIMIT",
    "Check",
    "DnsPythonResolver",
    "DnsTempError",
    "SpfResult",
    "TxtAResolver",
    "alive_command",
    "check_hostname",
    "check_hosts_file",
    "check_mta_running",
    "check_resolves",
    "check_smtp",
    "check_spf",
    "hostname_check",
    "hosts_file_check",
    "hosts_file_problems",
    "mta_running_check",
    "not_qualified_reason",
    "resolver_nameservers",
    "run_checks",
    "short_name",
    "spf_covers",
    "validate_diagnose_input",
]

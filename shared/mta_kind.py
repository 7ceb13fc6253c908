"""From a configured MTA kind (``sendmail``, ``postfix`` or ``auto``) to a host profile.

The agent, ``relayfleet-ops`` and the controller's SSH transport resolve a configuration
the same way: a named kind is taken as it is; ``auto`` takes the kind the host was found
to run (:func:`shared.mta.detect_kind`, or a kind detected before and remembered) with
that kind's own settings, ignoring those only the other kind reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.profile import AUTO_KIND, HostProfile, build_profile


def resolve_profile(kind: str, flavour: str, overrides: Mapping[str, Any] | None,
                    detect: Callable[[], str]) -> HostProfile:
    """The profile for a configured ``kind``; ``detect()`` is called for ``auto`` only."""
    auto = kind == AUTO_KIND
    return build_profile(detect() if auto else kind, flavour, overrides,
                         other_kinds_keys=auto)


#: the agent's answer header naming the MTA kind it drives (the controller learns an auto
#: host's kind from any answer)
MTA_HEADER = "X-Relayfleet-Mta"

"""The controller's exceptions, under the shared tree's root.

::

    RelayfleetError (shared.errors)
    └── ControllerError          something the caller asked of the controller cannot be done
        ├── NotFound             no such object, or not one the caller's token may see (404)
        ├── PermissionDenied     the token's role does not allow this (403)
        ├── Conflict             the request collides with another (409)
        └── Unavailable          a service the controller needs is down (503)

Validation problems raise :class:`shared.errors.ValidationError` (422), as everywhere.
Messages are shown to callers as they are: they never contain a secret.
"""

from __future__ import annotations

from shared.errors import RelayfleetError


class ControllerError(RelayfleetError):
    """Base of the controller's own errors."""

    kind = "controller"
    status = 400


class NotFound(ControllerError):
    """No such object in the caller's view (another tenant's objects do not exist for it)."""

    kind = "not_found"
    status = 404


class PermissionDenied(ControllerError):
    """The token's role is not enough for this call."""

    kind = "forbidden"
    status = 403


class Conflict(ControllerError):
    """The request collides with another one (a duplicate name, a key still being used)."""

    kind = "conflict"
    status = 409


class Unavailable(ControllerError):
    """A service the controller depends on (the broker) cannot be reached."""

    kind = "unavailable"
    status = 503

"""Celery bound to the Flask app factory: every task runs inside an app context.

Delivery guarantees (SPEC §6): JSON only; ``acks_late`` with ``task_reject_on_worker_lost``
so a task whose worker dies goes back to the queue; prefetch 1 so a worker holds no more
than it runs; time limits below Redis's visibility timeout so a live task is never handed
to a second worker.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from flask import Flask

from controller.config import Settings

QUEUE = "relayfleet"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from the controller's."""
    hard_limit = settings.visibility_timeout_s - 5
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # look for tasks of dead workers every few seconds instead of every 100 s
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # A lane needs at most lane_budget_s + timeout_s (Settings.max_timeout_s keeps that
        # LANE_MARGIN_S under the visibility timeout); the limits sit in that margin.
        "task_time_limit": hard_limit,
        "task_soft_time_limit": hard_limit - 5,
        "task_default_queue": QUEUE,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule": {"relayfleet-sweep": {"task": "relayfleet.sweep",
                                               "schedule": float(settings.sweep_every_s)},
                          "relayfleet-tick": {"task": "relayfleet.tick",
                                              "schedule": float(settings.scheduler_tick_s)}},
    }


def celery_init_app(app: Flask) -> Celery:
    """Make the Celery app for ``app`` (the Flask docs' pattern) and register the tasks."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask)
    celery.config_from_object(celery_config(app.config["RELAYFLEET_SETTINGS"]))
    celery.set_default()
    app.extensions["celery"] = celery
    import controller.tasks  # noqa: F401  (registers the tasks with this app)

    return celery

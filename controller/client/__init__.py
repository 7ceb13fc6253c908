"""``relayfleet``: the operator CLI over the controller's REST API (extra ``relayfleet[cli]``).

It speaks only HTTP to the controller: nothing here imports Flask, Celery, SQLAlchemy or
paramiko, so ``pip install relayfleet[cli]`` on an engineer's laptop pulls click, rich and
httpx and nothing of the server side.
"""

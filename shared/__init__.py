"""What the agent and the controller share: MTA operations, parsers, schemas, transports."""

__version__ = "0.1.0"

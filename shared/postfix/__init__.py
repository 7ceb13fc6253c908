"""Postfix support: parsers for its queue listings and maillog lines, and its operations."""

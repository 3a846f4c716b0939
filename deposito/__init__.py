"""Deposito: a replicated file depot built on Twisted."""

__version__ = "0.1.0"

"""Certified defenses: each certifier returns a typed certificate defined in its own module."""
CERTIFIERS: dict[str, type] = {}

__all__ = ["CERTIFIERS"]

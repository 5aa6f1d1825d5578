"""Model repair (``Mitigator``): returns a new model."""
MITIGATORS: dict[str, type] = {}

__all__ = ["MITIGATORS"]

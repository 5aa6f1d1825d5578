"""Training-set sanitizers (``Sanitizer``): which samples are poison?"""
SANITIZERS: dict[str, type] = {}

__all__ = ["SANITIZERS"]

"""Model inspection (``Detector``): is this model backdoored?"""
DETECTORS: dict[str, type] = {}

__all__ = ["DETECTORS"]

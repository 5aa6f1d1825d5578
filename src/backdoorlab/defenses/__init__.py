"""Defenses by role: detect/, sanitize/, filter/, mitigate/."""

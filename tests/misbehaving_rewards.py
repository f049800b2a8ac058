"""Rewards that misbehave, for the bad-input tests (importable: tests/ is on the path)."""


def too_few(samples: list[str]) -> list[float]:
    return [1.0]

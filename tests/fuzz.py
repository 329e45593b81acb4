"""The fuzz suites' budget: ``RELFORMER_FUZZ=deep`` (release checks) runs 25x the default examples."""
import os

from hypothesis import HealthCheck, settings

DEEP = os.environ.get("RELFORMER_FUZZ", "") == "deep"


def budget(default: int):
    """Hypothesis settings for ``default`` examples (25x in deep mode), no deadline (a loaded CI
    machine is slow), derandomised so a failure repeats."""
    return settings(max_examples=default * (25 if DEEP else 1), deadline=None, derandomize=not DEEP,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

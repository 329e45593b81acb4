"""Hypothesis profiles for the attention fuzz suite (``test_fuzz.py``).

``RELFORMER_FUZZ=deep`` selects the release-check depth (2,000 examples per property, Flex over
every relation); the default keeps the file within about a minute on one core.
"""
from hypothesis import HealthCheck, settings

from tests.fuzz import DEEP as FUZZ_DEEP  # one switch for every fuzz suite: RELFORMER_FUZZ=deep

_common = dict(deadline=None, derandomize=not FUZZ_DEEP, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
settings.register_profile("relformer-fuzz", max_examples=400, **_common)
settings.register_profile("relformer-fuzz-flex", max_examples=16, **_common)
settings.register_profile("relformer-fuzz-deep", max_examples=2000, **_common)
settings.register_profile("relformer-fuzz-flex-deep", max_examples=300, **_common)

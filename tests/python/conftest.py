import os
import sys

from hypothesis import HealthCheck, settings

# Make tests/python/reference.py and helpers.py importable whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Reproducible in CI: derandomized, no example database, no deadline (the machine may be busy).
settings.register_profile(
    "rtml-ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Opt-in local exploration: HYPOTHESIS_PROFILE=rtml-explore pytest tests/python
settings.register_profile(
    "rtml-explore",
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "rtml-ci"))

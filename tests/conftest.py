"""Suite-wide settings: a Hypothesis profile that tolerates a loaded 2-core CI machine."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

settings.register_profile("streamrec", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("streamrec")

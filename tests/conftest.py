"""Settings for the whole suite.

Hypothesis: no per-example deadline and no too-slow health check (examples here start pandas,
pyarrow and sometimes a MariaDB round trip, on a 2-CPU machine other work may be loading). The
``ci`` profile (``HYPOTHESIS_PROFILE=ci``, set by .ci/run) also derandomizes, so a landing is
judged on the same examples every time; a developer's run explores new ones.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

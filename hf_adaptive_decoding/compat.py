"""Every private transformers API this package touches, in one place.

transformers gives no public way to see hidden states while sampling, to choose a candidate generator per call, or to
resolve a call's generation config the way `generate` does. Each function below wraps one private API; its test in
`tests/test_compat.py` fails loudly, naming the API, when a transformers release changes it. The versions CI tests are
the ones `pyproject.toml` pins.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------ generation (generate.py)

# ------------------------------------------------------------------------------------------ speculative decoding

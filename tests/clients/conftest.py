"""Setup the client matrix needs before any client library is imported: there is no network here, so no library
may fetch anything on import (litellm fetches its model-cost map from GitHub unless told to use its bundled copy)."""

from __future__ import annotations

import os

# Read by litellm at import time: the bundled model-cost map, and no catalog, check or tokenizer fetched from the
# internet.  A conftest runs before the test modules of its directory are imported.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

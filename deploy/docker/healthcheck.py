"""The container's HEALTHCHECK: exit 0 when retserve's /health answers 200 (model loaded).
Standard library only: the slim image has no curl."""

import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("RETSERVE_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as e:
    print(f"unhealthy: {e}", file=sys.stderr)
    sys.exit(1)

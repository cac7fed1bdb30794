"""`python -m sglkit.gpu`: the GPU smoke checks without pytest (same checks, same table)."""

import sys

from sglkit.errors import SglkitError
from sglkit.gpu.smoke import main

try:
    sys.exit(main())
except SglkitError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)

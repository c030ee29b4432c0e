"""``python -m model_containers``: run a model container (see ``model_containers.cli``)."""

from __future__ import annotations

import sys

from model_containers.cli import main

if __name__ == "__main__":
    sys.exit(main())

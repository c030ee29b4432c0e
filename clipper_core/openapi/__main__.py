"""``python -m clipper_core.openapi [PATH]``: write the OpenAPI document to PATH
(default ``docs/reference/openapi.json``)."""

from __future__ import annotations

import sys
from pathlib import Path

from clipper_core.openapi import document_bytes


def main(argv: list[str]) -> None:
    path = Path(argv[0] if argv else "docs/reference/openapi.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(document_bytes())
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])

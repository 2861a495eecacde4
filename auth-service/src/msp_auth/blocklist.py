"""Loads the common-password blocklist (the data the pure policy module checks against).
The default list ships inside this package: data/common-passwords.txt.gz (see data/README.md
for its source)."""
from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from pathlib import Path


@lru_cache(maxsize=4)
def load(path: str | None = None) -> frozenset[str]:
    if path is None:
        raw = resources.files("msp_auth").joinpath("data/common-passwords.txt.gz").read_bytes()
        text = gzip.decompress(raw).decode("utf-8")
    else:
        data = Path(path).read_bytes()
        text = (gzip.decompress(data) if path.endswith(".gz") else data).decode("utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())

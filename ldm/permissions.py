"""Files written under a private temporary name still get the permissions a plain open() would give."""

from __future__ import annotations

import os
from pathlib import Path


def usual_permissions(path: Path, mode: int = 0o666) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give `path` `mode` less the umask (0o777 for folders)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)

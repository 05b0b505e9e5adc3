"""The process of a command that makes its images and ends: no garbage collection over what the imports made, and
no teardown at the exit.

Python's cyclic garbage collector walks every tracked object in its full passes; after importing PyTorch there are
hundreds of thousands of them, and loading a model (the tokenizer's vocabulary alone) triggers such passes. The
objects the imports made live until the exit anyway, so `gc.freeze()` sets them aside. When the command has written
its files and printed its lines, a normal exit would still finalize every module and free every tensor one by one
(importing PyTorch alone leaves much of that); the command instead leaves straight after flushing
what it printed: its files are closed by then, and nothing of its runs in another thread.
`main()` itself is untouched, for callers in Python (and the tests) that stay in their process.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn


def run_short_lived(main: Callable[[], int]) -> NoReturn:
    """Run a command's `main()` with the imports' objects frozen, flush standard output, standard error and the
    log, and end the process with main's exit code."""
    gc.freeze()
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: a normal exit loses that too
            stream.flush()
    os._exit(code)

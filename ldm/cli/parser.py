"""An argument parser whose errors are one line and exit 2, as every other bad input is (argparse's own
prints its usage text first)."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")

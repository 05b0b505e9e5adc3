"""The server's settings that clients read and change: AUTOMATIC1111's /sdapi/v1/options, under its key names.

One frozen value, replaced whole on each change, so the worker thread always reads a consistent set.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from ldm.errors import ConfigError
from ldm.generate.preview import METHODS
from ldm.text import emphasis

log = logging.getLogger("ldm.serve")
# A1111's show_progress_type values and ours ("Approx NN" is A1111's small network; the cheap map stands in).
PREVIEW_NAMES = {"Approx cheap": "approx", "Approx NN": "approx", "TAESD": "taesd", "Full": "full", "None": "none"}


@dataclass(frozen=True)
class Options:
    model: str  # the checkpoint's file name in the catalog (A1111's sd_model_checkpoint holds its title)
    clip_skip: int = 1  # CLIP_stop_at_last_layers: the default of requests that do not set it
    emphasis: str = emphasis.DEFAULT
    preview: str = "approx"  # show_progress_type, as ldm names it
    preview_every: int = 1  # show_progress_every_n_steps

    def a1111(self, title: str, sha256: str | None) -> dict[str, Any]:
        """GET /sdapi/v1/options."""
        shown = {v: k for k, v in reversed(PREVIEW_NAMES.items())}  # ours -> A1111's first name for it
        return {
            "sd_model_checkpoint": title,
            "sd_checkpoint_hash": sha256,
            "CLIP_stop_at_last_layers": self.clip_skip,
            "emphasis": emphasis.A1111_NAMES[self.emphasis],
            "show_progress_type": shown[self.preview],
            "show_progress_every_n_steps": self.preview_every,
            "live_previews_enable": self.preview != "none",
            "samples_format": "png",
            "enable_pnginfo": True,
        }

    def changed(self, given: dict[str, Any]) -> Options:
        """These options with the A1111 keys of `given` applied (sd_model_checkpoint is the caller's: it loads a
        model). Unknown keys are logged and left alone, as A1111 leaves them; bad values raise ConfigError."""
        changes: dict[str, Any] = {}
        for key, value in given.items():
            if key == "CLIP_stop_at_last_layers":
                changes["clip_skip"] = _whole(key, value, 1)
            elif key == "emphasis":
                changes["emphasis"] = emphasis.from_a1111(str(value))
            elif key == "show_progress_type":
                if value not in PREVIEW_NAMES:
                    raise ConfigError(f"show_progress_type must be one of {', '.join(PREVIEW_NAMES)}, got {value!r}")
                changes["preview"] = PREVIEW_NAMES[value]
            elif key == "live_previews_enable":
                changes["preview"] = self.preview if value else "none"
            elif key == "show_progress_every_n_steps":
                changes["preview_every"] = _whole(key, value, 1)
            elif key != "sd_model_checkpoint":
                log.info("option %s is not one ldm has; left alone", key)
        options = dataclasses.replace(self, **changes)
        if options.preview not in METHODS:
            raise ConfigError(f"unknown preview {options.preview!r}; choose one of {', '.join(METHODS)}")
        return options


def _whole(key: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{key} must be a whole number from {least} up, got {value!r}")
    return value

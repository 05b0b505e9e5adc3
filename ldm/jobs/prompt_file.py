"""Prompt files: one job a line, as AUTOMATIC1111's "Prompts from file or textbox" script reads them, or a
.jsonl / .csv table with a column for each setting.

prompts.txt   a prompt a line, or a line of options: --prompt "a cat" --negative_prompt "blur" --steps 30
prompts.jsonl {"prompt": "a cat", "negative_prompt": "blur", "seed": 7, "cfg_scale": 6}
prompts.csv   prompt,negative prompt,seed  (a header row; an empty cell is a setting not given)

Settings go by A1111's names (cfg_scale, sampler_name, ...) or ldm's own (guidance, sampler, ...). A line's
batch_size and n_iter make it that many jobs, one image each, with seeds counting up from the line's own seed.
"""

from __future__ import annotations

import csv
import json
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ldm.errors import ConfigError
from ldm.generate.request import sampler_from_display
from ldm.sampling.samplers import SPECS

FORMATS = (".txt", ".jsonl", ".csv")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def _whole(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _yes_no(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _sampler(value: Any) -> dict[str, Any]:
    """Our sampler name, or A1111's ("DPM++ 2M", "DPM++ 2M Karras")."""
    name = _text(value)
    if name in SPECS:
        return {"sampler": name}
    sampler, karras = sampler_from_display(name)
    return {"sampler": sampler, "karras": True} if karras else {"sampler": sampler}


def _field(name: str, read: Callable[[Any], Any]) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {name: read(value)}


# Every setting a job may give, under A1111's name and ldm's own: the request fields it sets.
OPTIONS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "prompt": _field("prompt", _text),
    "negative_prompt": _field("negative_prompt", _text),
    "seed": _field("seed", _whole),
    "steps": _field("steps", _whole),
    "cfg_scale": _field("guidance", _number),
    "guidance": _field("guidance", _number),
    "sampler_name": _sampler,
    "sampler": _sampler,
    "karras": _field("karras", _yes_no),
    "width": _field("width", _whole),
    "height": _field("height", _whole),
    "batch_size": _field("batch_size", _whole),
    "n_iter": _field("n_iter", _whole),
    "clip_skip": _field("clip_skip", _whole),
    "eta": _field("eta", _number),
    "emphasis": _field("emphasis", _text),
    "hires_scale": _field("hires_scale", _number),
    "hires_steps": _field("hires_steps", _whole),
    "hires_upscaler": _field("hires_upscaler", _text),
    "denoising_strength": _field("strength", _number),
    "strength": _field("strength", _number),
}


def read_prompt_file(path: Path, *, batch_size: int = 1, n_iter: int = 1) -> list[dict[str, Any]]:
    """The jobs of a prompt file, one image each, as request settings. `batch_size` and `n_iter` are the
    counts for lines that give none."""
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"{path}: a prompt file is {', '.join(FORMATS)}; rename it or convert it")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"cannot read the prompt file {path} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    rows = {".txt": _text_rows, ".jsonl": _jsonl_rows, ".csv": _csv_rows}[path.suffix.lower()](text)
    jobs: list[dict[str, Any]] = []
    try:
        for number, row in rows:
            try:
                jobs += _expand(_settings(row), batch_size, n_iter)
            except (ConfigError, ValueError) as e:
                raise ConfigError(f"line {number}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{path.name} {e}") from None
    return jobs


def _settings(row: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key, value in row.items():
        name = key.strip().lower().replace(" ", "_").replace("-", "_")
        if name not in OPTIONS:
            raise ConfigError(f"unknown setting {key!r}; ldm reads {', '.join(OPTIONS)}")
        settings.update(OPTIONS[name](value))
    if "prompt" not in settings:
        raise ConfigError("no prompt; give one")
    return settings


def _expand(settings: dict[str, Any], batch_size: int, n_iter: int) -> list[dict[str, Any]]:
    count = settings.pop("batch_size", batch_size) * settings.pop("n_iter", n_iter)
    if count < 1:
        raise ConfigError("batch_size and n_iter must be at least 1")
    seed = settings.get("seed")
    return [settings if seed is None else {**settings, "seed": seed + i} for i in range(count)]


def _text_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line:
            try:
                yield number, _options(line) if line.startswith("--") else {"prompt": line}
            except (ConfigError, ValueError) as e:
                raise ConfigError(f"line {number}: {e}") from None


def _options(line: str) -> dict[str, str]:
    """`--prompt a cat --steps 30` -> {"prompt": "a cat", "steps": "30"}: A1111's reading, where a prompt runs on
    over unquoted words up to the next option."""
    words = shlex.split(line)
    options: dict[str, str] = {}
    at = 0
    while at < len(words):
        option = words[at]
        if not option.startswith("--"):
            raise ConfigError(f"{option!r} is not an option; quote a prompt that has spaces and --")
        if at + 1 == len(words):
            raise ConfigError(f"{option} has no value")
        values, at = [words[at + 1]], at + 2
        while option in ("--prompt", "--negative_prompt") and at < len(words) and not words[at].startswith("--"):
            values, at = [*values, words[at]], at + 1
        options[option[2:]] = " ".join(values)
    return options


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"line {number} is not JSON ({e.msg}); write one object a line") from None
        if not isinstance(row, dict):
            raise ConfigError(f"line {number} is not a JSON object; write one object a line")
        yield number, {k: v for k, v in row.items() if v is not None}


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    try:
        for row in reader:
            if None in row:
                raise ConfigError(f"line {reader.line_num} has more cells than the header row names")
            if any(row.values()):
                yield reader.line_num, {k: v for k, v in row.items() if v not in ("", None)}
    except csv.Error as e:
        raise ConfigError(f"line {reader.line_num} is not CSV ({e})") from None

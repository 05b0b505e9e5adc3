"""A plain install works: the wheel carries every module and shipped file, and its console script makes an image from
a virtualenv that sees the test environment's packages but neither the checkout nor its editable install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from ldm.outputs.infotext import parse_infotext

REPO = Path(__file__).resolve().parent.parent
# What the wheel is built from; pyproject.toml's readme must be there too.
SOURCES = ("ldm", "configs", "weights", "pyproject.toml", "README.md")
# Files beside the modules that ldm reads at run time, as (folder in the checkout, pattern, folder in the wheel).
SHIPPED = (
    ("configs", "*.json", "ldm/configs"),
    ("weights", "*.safetensors", "ldm/weights"),
    ("weights", "*.json", "ldm/weights"),
    ("ldm/text/data", "*.gz", "ldm/text/data"),
    ("ldm/serve/web", "*.html", "ldm/serve/web"),
    ("ldm/serve/web", "*.js", "ldm/serve/web"),
    ("ldm/serve/web", "*.css", "ldm/serve/web"),
)


def _run(
    cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _clean_env() -> dict[str, str]:
    """The caller's environment (LDM_CACHE included) without anything that could put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the checkout: setuptools never empties build/, so one built in place could still carry
    a module deleted since, and the test would pass on a file that no longer exists."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    # No build isolation: offline, and the test environment's setuptools is what `pip install -e` builds with.
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", src]
    done = _run(cmd, cwd=root, env=_clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (root / "dist").glob("ldm-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """A new virtualenv holding the wheel (--no-deps); torch and the rest come from the test environment."""
    env_dir = wheel.parent.parent / "venv"
    venv.create(env_dir, symlinks=os.name != "nt", with_pip=False)  # the test environment's pip installs
    python = env_dir / "bin" / "python"
    done = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env_dir, _clean_env())
    site_packages = Path(done.stdout.strip())
    # A .pth line puts a folder on sys.path without reading the .pth files in it, so the test environment's editable
    # install of ldm (a finder started by its __editable__*.pth) stays off, and only the wheel can provide ldm.
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    ours |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    assert not any(Path(p).resolve() == REPO for p in ours)
    (site_packages / "test-environment.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    cmd = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel]
    done = _run(cmd, env_dir, _clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return env_dir


def test_wheel_carries_every_module_and_shipped_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = [p for p in (REPO / "ldm").rglob("*.py") if "__pycache__" not in p.parts]
    wanted = {p.relative_to(REPO).as_posix() for p in modules}
    for folder, pattern, inside in SHIPPED:
        files = sorted((REPO / folder).glob(pattern))
        assert files, f"nothing matches {folder}/{pattern} in the checkout"
        wanted |= {f"{inside}/{f.name}" for f in files}
    assert sorted(wanted - names) == []


def test_ldm_is_imported_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    code = "import ldm, ldm.shipped; print(ldm.__file__); print(ldm.shipped.shipped('weights'))"
    code += "; from ldm.serve.web_routes import FILES; print(*FILES.values())"  # the web page's files
    done = _run([installed / "bin" / "python", "-c", code], tmp_path, _clean_env())
    assert done.returncode == 0, done.stderr
    assert "index.html" in done.stdout and "app.js" in done.stdout
    for line in done.stdout.split():
        path = Path(line).resolve()
        assert path.is_relative_to(installed.resolve()), f"{path} is not inside the new virtualenv {installed}"


def test_console_script_makes_an_image_with_the_builtin_model(installed: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    cmd = [installed / "bin" / "ldm-txt2img", "--prompt", "a red circle", "--seed", "1", "--outdir", outdir, "--quiet"]
    # From outside the checkout, so no configs/ or weights/ beside the cwd. A few seconds at the built-in model's
    # 64x64; the timeout ends the minutes a wheel without defaults.json would spend at SD v1's 512x512.
    done = _run(cmd, tmp_path, _clean_env(), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    (png,) = outdir.glob("*.png")
    with Image.open(png) as image:
        _, _, fields = parse_infotext(image.text["parameters"])
    defaults = json.loads((REPO / "weights" / "defaults.json").read_text())
    assert fields["Size"] == f"{defaults['width']}x{defaults['height']}"
    assert fields["Steps"] == str(defaults["steps"])

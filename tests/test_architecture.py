"""The dependency rules between ldm's packages, read from the imports of every file (ast): a broken rule fails
with the file and the import that breaks it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ldm"


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ldm import in the file, at any depth (imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)]
            if node.module == "ldm":  # `from ldm import samplers` names a module too
                found += [(node.lineno, f"ldm.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "ldm" or name.startswith("ldm.")]


def part(module: str) -> str:
    """`ldm.models.unet` -> "models"; `ldm.config` -> "config"; `ldm` -> "" (the package's __init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def allowed(importer: str, imported: str) -> bool:
    """Whether code in package `importer` may import from `imported` (both as `part` names them)."""
    if importer == imported:
        return True
    if importer == "models":  # model code reads like CompVis: no device tricks, no files, no pipeline
        return imported in ("config", "errors")
    if importer == "sampling" and imported in ("models", "cpu", "checkpoints", "runtime", "text"):
        return False  # the samplers are math over a denoiser
    if importer == "checkpoints" and imported == "cpu":
        return False  # reading files never depends on how a CPU computes
    if imported == "serve":  # the HTTP server: only its console script starts it
        return importer == "cli"
    if importer == "jobs" and imported == "generate":  # many generations, over many processes: above one
        return True
    if imported == "jobs":  # only the console scripts and __init__ run many jobs
        return importer in ("cli", "")
    if imported in ("generate", "cli", ""):  # the top of the stack: the console scripts, __init__ and the server
        return importer in ("cli", "") or importer == "serve" and imported != "cli"
    return True


def violations(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        importer = relative.parts[0] if len(relative.parts) > 1 else ""
        if importer == "" and relative.name != "__init__.py":
            importer = relative.stem  # ldm/config.py, ldm/errors.py, ldm/shipped.py: ground floor
        for line, module in imports_of(path):
            if not allowed(importer, part(module)):
                found.append(f"ldm/{relative}:{line} imports {module}")
    return found


def test_every_package_keeps_to_its_dependency_rules():
    assert violations(PACKAGE) == []


@pytest.mark.parametrize(
    ("file", "source"),
    [
        ("models/unet.py", "from ldm.cpu.packing import PackedLayer\n"),
        ("models/vae.py", "def f():\n    from ldm.runtime.offload import MODES\n"),
        ("sampling/samplers.py", "from ldm.models.unet import UNetModel\n"),
        ("checkpoints/read.py", "import ldm.cpu.heap\n"),
        ("outputs/png.py", "from ldm.generate.request import GenerationRequest\n"),
        ("cpu/swap_in.py", "from ldm import Pipeline\n"),
        ("generate/pipeline.py", "from ldm.jobs.many import generate_many\n"),
        ("jobs/many.py", "from ldm.cli.txt2img import run\n"),
    ],
)
def test_a_broken_rule_is_reported_with_its_file_and_import(tmp_path, file, source):
    target = tmp_path / "ldm" / file
    target.parent.mkdir(parents=True)
    target.write_text(source)
    assert len(violations(tmp_path / "ldm")) == 1 and violations(tmp_path / "ldm")[0].startswith(f"ldm/{file}:")

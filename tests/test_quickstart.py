"""The README's first command: the built-in model with no checkpoint given, at its own defaults, good enough.

A retrained or broken built-in model, or defaults that no longer reach the pipeline, fail here: the judge
(tools/judge.py) scores 12 fixed scenes, which the model gets mostly right (weights/README.md reports colour
0.91 and shape 0.86 over 64); a model drawing at chance scores 1/6 and 1/3.
"""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from ldm import GenerationRequest, Pipeline
from ldm.generate.pipeline import BUILTIN

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
import eval as evaluation  # noqa: E402
import scenes  # noqa: E402

DEFAULTS = json.loads((Path(__file__).parents[1] / "weights" / "defaults.json").read_text())
FLOOR = {"colour": 0.75, "shape": 0.65}  # 9 and 8 of the 12 (the README's 64-image figures: 0.91, 0.86)


def test_pipeline_load_with_no_argument_is_the_builtin_model_at_its_defaults():
    pipe = Pipeline.load()
    assert pipe.source == BUILTIN
    request = pipe.request(prompt="x")
    assert {k: getattr(request, k) for k in DEFAULTS} == DEFAULTS
    assert (request.width, request.height, request.sampler, request.steps) == (64, 64, "dpmpp_2m", 20)


def test_the_builtin_model_draws_what_the_caption_says():
    pipe = Pipeline.load()
    targets = [s for s, _ in scenes.sample(12, seed=2024)]
    result, images = evaluation.evaluate(pipe, targets)  # the model's own defaults: no sampler or steps given
    assert [im.size for im in images] == [(64, 64)] * 12
    assert all(result[a] >= floor for a, floor in FLOOR.items()), result


def test_ldm_txt2img_with_only_a_prompt_uses_the_builtin_model_and_says_so(tmp_path):
    prompt = "a large red circle at the top left on a white background"
    out = subprocess.run([sys.executable, "-m", "ldm.cli.txt2img", "--prompt", prompt, "--seed", "7", "--outdir",
                          str(tmp_path), "--quiet"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    request = GenerationRequest.from_infotext(Image.open(out.stdout.strip()).text["parameters"])
    assert {k: getattr(request, k) for k in DEFAULTS} == DEFAULTS and request.seed == 7
    assert request.extra["Model"] == "ldm-shapes" and len(request.extra["Model hash"]) == 10

"""The built-in model's data (tools/scenes.py), judge (tools/judge.py) and evaluation (tools/eval.py)."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
import eval as evaluation  # noqa: E402
import judge  # noqa: E402
import scenes  # noqa: E402


def test_dataset_is_deterministic_and_keeps_held_out_pairs_out():
    a, b = scenes.sample(200, seed=4), scenes.sample(200, seed=4)
    assert a == b and a != scenes.sample(200, seed=5)
    assert np.array_equal(np.asarray(a[0][0].render()), np.asarray(b[0][0].render()))
    assert not any((s.colour, s.shape) in scenes.HELD_OUT for s, _ in scenes.sample(3000, seed=1))
    held = {(s.colour, s.shape) for s, _ in scenes.sample(300, seed=1, held_out=True)}
    assert held == set(scenes.HELD_OUT)


def test_captions_name_every_attribute():
    for scene, caption in scenes.sample(300, seed=2):
        for value in (scene.colour, scene.shape, scene.size, scene.position):
            assert value in caption


def test_judge_is_right_on_ground_truth_renders_clean_and_degraded():
    targets = [s for s, _ in scenes.sample(300, seed=9) + scenes.sample(60, seed=9, held_out=True)]
    clean = [s.render() for s in targets]
    assert judge.score(clean, targets)["all"] == 1.0
    rng = np.random.default_rng(0)
    degraded = judge.score([judge.degrade(im, rng) for im in clean], targets)
    assert degraded["colour"] >= 0.98 and degraded["position"] >= 0.98 and degraded["shape"] >= 0.85


def test_judge_finds_nothing_in_blank_or_grey_noise():
    rng = np.random.default_rng(1)
    grey = Image.fromarray(np.repeat(rng.integers(100, 200, (64, 64, 1)), 3, axis=2).astype(np.uint8))
    for image in (Image.new("RGB", (64, 64), (255, 255, 255)), grey):
        assert judge.judge(image)["colour"] is None


def test_eval_renders_at_the_scene_size_whatever_the_checkpoint_defaults(tmp_path):
    """A checkpoint without ldm's defaults.json defaults to 512x512; the judge needs 64x64 scenes."""
    from ldm import Pipeline

    builtin = Path(__file__).parents[1] / "weights" / "ldm-shapes.safetensors"
    copy = tmp_path / "shapes.safetensors"  # same weights, but not the built-in path, so SD v1 defaults apply
    copy.write_bytes(builtin.read_bytes())
    targets = [s for s, _ in scenes.sample(2, seed=1)]
    result, images = evaluation.evaluate(Pipeline.load(copy), targets, sampler="ddim", steps=2, guidance=7.5)
    assert [im.size for im in images] == [(scenes.SIZE, scenes.SIZE)] * 2
    assert set(result) >= {"colour", "shape", "position", "size", "all"}


def test_the_inpainting_eval_asks_for_a_new_object_and_counts_untouched_pixels():
    from ldm import Pipeline

    targets = [s for s, _ in scenes.sample(2, seed=3)]
    new = evaluation.replacement(targets[0], 0)
    assert (new.colour, new.shape) != (targets[0].colour, targets[0].shape) and new.position == targets[0].position
    mask = np.asarray(evaluation.object_mask(targets[0]))
    thing = targets[0].things[0]
    assert mask[round(thing.cy), round(thing.cx)] == 255 and mask.mean() < 255 * 0.5
    result, images = evaluation.evaluate_inpainting(Pipeline.load(), targets, sampler="ddim", steps=2)
    assert result["kept"] == 1.0 and len(images) == 2 and set(result) >= {"colour", "shape", "all"}

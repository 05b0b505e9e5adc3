"""The web page at / in a real browser (headless Chromium through Playwright) against ldm-serve with the built-in
model: a prompt makes a picture with a moving progress bar and a live preview, the download is the server's PNG,
a painted mask inpaints inside itself only, a dropped PNG shows its parameters, a refusal appears next to its
field, and a lost connection is said and retried. Each state's screenshot is saved in runs/web/ (not committed).

Without Debian's `chromium` package these tests are skipped (the only skip): `apt-get install chromium`.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import serving
from PIL import Image

from ldm.outputs.png import png_bytes
from ldm.serve.catalog import Catalog
from ldm.serve.limits import Limits
from ldm.serve.server import Server, Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "the browser tests need headless Chromium: install Debian's chromium package (apt-get install chromium)",
        allow_module_level=True,
    )

from playwright.sync_api import Page, sync_playwright  # noqa: E402

SHOTS = Path(__file__).resolve().parent.parent / "runs" / "web"
# The built-in model steps in milliseconds at 64x64: each step is slowed so that the bar is seen moving.
STEP_SECONDS = 0.04
MAX_STEPS = 100  # --max-steps: 1000 is refused


class SlowStepServer(Server):
    def load(self, filename: str):
        pipe = super().load(filename)
        generate = pipe.generate

        def slowly(request, *, callback=None, **options):
            def step(*args):
                time.sleep(STEP_SECONDS)
                return callback(*args)

            return generate(request, callback=step if callback else None, **options)

        pipe.generate = slowly
        return pipe


def settings_in(folder: Path, **changes) -> Settings:
    return Settings(outdir=folder, lora_dir=folder / "none", embeddings_dir=folder / "none", **changes)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    settings = settings_in(tmp_path_factory.mktemp("web-served"), limits=Limits(steps=MAX_STEPS))
    with serving(SlowStepServer(Catalog(), settings)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, base_url, request):
    """A fresh page at 1280x800; it must raise no script error and ask nothing of any other server."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    errors, elsewhere = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: r.url.startswith((base_url, "data:", "blob:")) or elsewhere.append(r.url))
    page.goto(base_url + "/")
    page.wait_for_function("() => document.getElementById('sampler_name').options.length > 1")
    yield page
    context.close()
    assert errors == [] and elsewhere == []


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text.split(",")[-1])))


def generate(page: Page, kind: str = "txt2img", keys: bool = False) -> tuple[dict, dict]:
    """Generate from the form as it is (Ctrl+Enter, or the button): the request body sent and the JSON answer."""
    with page.expect_response(f"**/sdapi/v1/{kind}", timeout=60_000) as answer:
        if keys:
            page.locator("#prompt").press("Control+Enter")
        else:
            page.locator("#generate").click()
    return json.loads(answer.value.request.post_data), answer.value.json()


def test_every_control_has_a_label_and_the_page_fits_a_phone(page):
    unlabelled = page.evaluate("""[...document.querySelectorAll('input, select, textarea, progress')]
        .filter(c => !c.labels?.length && !c.getAttribute('aria-label')).map(c => c.id || c.name)""")
    assert unlabelled == []
    assert page.evaluate("document.getElementById('generate').textContent") == "Generate"
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    shot(page, "phone")
    page.check("input[name=mode][value=img2img]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "phone-img2img")


def test_a_prompt_makes_a_picture_with_progress_a_preview_and_its_infotext(page):
    page.fill("#prompt", "a large red circle at the top left on a white background")
    page.fill("#steps", "40")
    page.fill("#seed", "7")
    page.locator("#prompt").focus()
    seen, previews, shown = set(), 0, False
    deadline = time.monotonic() + 60
    with page.expect_response("**/sdapi/v1/txt2img", timeout=60_000) as answer:
        page.keyboard.press("Control+Enter")
        while page.locator("#gallery li").count() == 0:
            assert time.monotonic() < deadline, "no picture came"
            value = page.evaluate("document.getElementById('progress').value")
            previews += page.evaluate("!document.getElementById('preview').hidden")
            seen.add(value)
            if 0.3 < value < 0.9 and previews and not shown:
                shot(page, "running")
                shown = True
            time.sleep(0.03)
    moving = sorted(v for v in seen if 0 < v < 1)
    assert len(moving) >= 3, seen  # the bar went up step by step
    assert previews > 0  # the live preview showed while it ran
    sent = answer.value.json()
    info = json.loads(sent["info"])
    assert info["steps"] == 40 and info["seed"] == 7
    page.wait_for_selector("#selected:not([hidden])")
    infotext = page.inner_text("#selected-info")
    assert infotext == info["infotexts"][0] and "Steps: 40" in infotext and "Seed: 7" in infotext
    assert page.get_attribute("#gallery li button", "title") == infotext  # on hover
    assert page.locator("#run").is_hidden()
    shot(page, "made")
    with page.expect_download() as download:
        page.click("#download")
    data = Path(download.value.path()).read_bytes()
    assert data == base64.b64decode(sent["images"][0])  # the server's PNG, byte for byte
    assert Image.open(io.BytesIO(data)).info["parameters"] == infotext
    page.click("#seed-random")
    page.click("#seed-reuse")
    assert page.input_value("#seed") == "7"


def test_the_hires_fix_and_use_these_settings(page):
    page.fill("#prompt", "a small red square in the middle on a white background")
    page.fill("#steps", "4")
    page.click("#hires summary")
    page.check("#enable_hr")
    page.fill("#hr_second_pass_steps", "2")
    page.select_option("#hr_upscaler", "Latent (nearest)")
    sent, answer = generate(page)
    assert sent["enable_hr"] is True and sent["hr_scale"] == 2 and sent["width"] is None  # the model's default
    assert decoded(answer["images"][0]).size == (128, 128)
    page.wait_for_selector("#selected:not([hidden])")
    assert "Hires upscale: 2" in page.inner_text("#selected-info")
    page.uncheck("#enable_hr")
    page.fill("#steps", "")
    page.fill("#hr_second_pass_steps", "0")
    page.click("#use-settings")  # the parameters come from /png-info, as A1111 parses them
    page.wait_for_function("() => document.getElementById('enable_hr').checked")
    assert (page.input_value("#steps"), page.input_value("#hr_second_pass_steps")) == ("4", "2")
    assert (page.input_value("#width"), page.input_value("#hr_upscaler")) == ("64", "Latent (nearest)")


def test_a_second_click_queues_interrupt_stops_a_job_and_skip_a_batch(page):
    answers = []
    page.on("response", lambda r: r.url.endswith("/sdapi/v1/txt2img") and answers.append(r))
    text = "() => document.getElementById('progress-text').textContent"
    page.fill("#prompt", "a small blue square")
    page.fill("#steps", "50")
    page.click("#generate")
    page.fill("#n_iter", "2")
    page.click("#generate")  # queued behind the first
    page.wait_for_function(f"() => ({text})().includes('1 more')")
    page.wait_for_function("() => document.getElementById('progress').value > 0.1")
    shot(page, "queued")
    page.click("#interrupt")
    page.wait_for_function(f"() => ({text})().includes('batch 1 of 2')")  # the second job runs
    page.click("#skip")
    page.wait_for_function(f"() => ({text})().includes('batch 2 of 2')")
    page.wait_for_selector("#run", state="hidden", timeout=60_000)
    made = [len(json.loads(answer.json()["info"])["infotexts"]) for answer in answers]
    assert made == [1, 2]  # a stopped picture still comes back
    assert page.locator("#gallery li").count() == 3


def test_inpainting_changes_the_picture_inside_the_painted_mask_only(page):
    page.fill("#prompt", "a large green triangle in the middle on a black background")
    page.fill("#steps", "6")
    _, made = generate(page)
    page.click("#send-to-img2img")
    page.wait_for_selector("#mask:not([hidden])")
    assert page.is_checked("input[name=mode][value=img2img]") and page.is_visible("#mask-canvas")
    page.fill("#mask_blur", "0")
    page.fill("#denoising_strength", "0.9")
    page.fill("#prompt", "a small yellow circle at the bottom right on a blue background")
    page.evaluate("b => { b.value = '12'; b.dispatchEvent(new Event('input')); }", page.query_selector("#brush_size"))
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()  # where it is in the window now
    page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.6)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.85, box["y"] + box["height"] * 0.8, steps=8)
    page.mouse.up()
    shot(page, "mask-painted")
    sent, answer = generate(page, "img2img")
    assert sent["init_images"][0] == made["images"][0]  # the server's own bytes, not a re-encoding
    assert sent["inpaint_full_res"] is False and sent["mask_blur"] == 0
    init = np.asarray(decoded(sent["init_images"][0]).convert("RGB"), dtype=int)
    mask = np.asarray(decoded(sent["mask"]).convert("L"))
    result = np.asarray(decoded(answer["images"][0]).convert("RGB"), dtype=int)
    assert result.shape == init.shape
    inside, outside = mask == 255, mask == 0
    assert 0.02 < inside.mean() < 0.5 and (inside | outside).mean() > 0.9
    assert (result[outside] == init[outside]).all()
    assert (np.abs(result[inside] - init[inside]).sum(axis=-1) > 0).mean() > 0.5
    page.wait_for_function("() => document.querySelectorAll('#gallery li').length == 2")
    shot(page, "inpainted")


def test_outpainting_extends_the_canvas_and_keeps_the_picture(page, tmp_path):
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    picture.paste((30, 30, 220), (0, 32, 64, 64))
    path = tmp_path / "start.png"
    picture.save(path)
    page.check("input[name=mode][value=img2img]")
    page.set_input_files("#init_images", path)
    page.wait_for_selector("#mask:not([hidden])")
    page.fill("#extend_by", "16")
    page.click("button[data-extend=right]")
    page.fill("#mask_blur", "0")
    page.fill("#steps", "6")
    page.select_option("#inpainting_fill", "2")  # latent noise in the new strip
    sent, answer = generate(page, "img2img")
    mask = np.asarray(decoded(sent["mask"]).convert("L"))
    assert mask.shape == (64, 80) and (mask[:, 64:] == 255).all() and (mask[:, :64] == 0).all()
    result = np.asarray(decoded(answer["images"][0]).convert("RGB"))
    assert result.shape == (64, 80, 3) and (result[:, :64] == np.asarray(picture)).all()
    shot(page, "outpainted")


def test_a_dropped_png_shows_its_parameters_and_fills_the_form(page):
    infotext = ("a small blue triangle at the top left on a cream background\nNegative prompt: blurry\n"
                "Steps: 13, Sampler: Euler a, CFG scale: 6.5, Seed: 4242, Size: 64x48")  # fmt: skip
    data = base64.b64encode(png_bytes(Image.new("RGB", (64, 48), "white"), infotext)).decode()
    page.evaluate(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            const where = document.getElementById('gallery-empty');
            for (const kind of ['dragover', 'drop'])
                where.dispatchEvent(new DragEvent(kind, {dataTransfer: files, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    page.wait_for_selector("#png-info-text:not([hidden])")
    assert page.inner_text("#png-info-text") == infotext
    shot(page, "png-info")
    page.click("#png-use-settings")
    filled = {f: page.input_value(f"#{f}") for f in ("prompt", "negative_prompt", "steps", "cfg_scale", "seed")}
    assert filled == {"prompt": infotext.split("\n")[0], "negative_prompt": "blurry", "steps": "13",
                      "cfg_scale": "6.5", "seed": "4242"}  # fmt: skip
    assert page.input_value("#sampler_name") == "Euler a"
    assert (page.input_value("#width"), page.input_value("#height")) == ("64", "48")


def test_a_refused_value_is_shown_next_to_its_field(page):
    page.fill("#steps", "1000")
    _, answer = generate(page)
    assert "--max-steps" in answer["detail"]
    page.wait_for_selector("#steps-error")
    assert f"over this server's {MAX_STEPS}" in page.inner_text("#steps-error")
    assert page.evaluate("document.getElementById('steps').closest('.field').nextElementSibling.id") == "steps-error"
    assert page.get_attribute("#steps", "aria-invalid") == "true"
    shot(page, "refused")
    page.fill("#steps", "4")
    page.fill("#width", "65")
    generate(page)
    page.wait_for_selector("#width-error")
    assert "multiple of 8" in page.inner_text("#width-error") and page.locator("#steps-error").count() == 0


# What the server says when it refuses a request (ldm/serve, ldm/generate), and the control the page shows it by.
MESSAGES = [
    ("steps: Input should be a valid integer, unable to parse string as an integer", "txt2img", "steps"),
    ("1000 steps is over this server's 100 (--max-steps)", "txt2img", "steps"),
    ("4096x4096 is over this server's 4194304 pixels (--max-pixels)", "txt2img", "width"),
    ("batch_size x n_iter = 20 is over the server's 16 (--max-images)", "txt2img", "batch_size"),
    ("Sampler not found: 'Foo'; GET /sdapi/v1/samplers lists them", "txt2img", "sampler_name"),
    ("seed must be -1 (random) or from 0 up, got -5", "txt2img", "seed"),
    ("strength must be a number from 0 to 1, got 1.5", "img2img", "denoising_strength"),
    ("strength must be a number from 0 to 1, got 1.5", "txt2img", "hr_denoising_strength"),
    ("mask blur must be a whole number of pixels from 0 to 256, got 300", "img2img", "mask_blur"),
    ("init_images[0] is not base64; send the file's bytes base64-encoded", "img2img", "init_images"),
    ("no model titled 'x'; closest: ldm-shapes.safetensors", "txt2img", "sd_model_checkpoint"),
    ("upscaler 'x' not found; GET /sdapi/v1/upscalers lists them", "txt2img", "hr_upscaler"),
    ("the mask repaints nothing (all black); paint white where the picture should change", "img2img", "mask"),
    ("ldm-serve does not support restore_faces; leave them out or at their defaults", "txt2img", None),
]


def test_each_refusal_points_at_the_control_it_concerns(page):
    found = page.evaluate(
        """async cases => {
            const { fieldOf } = await import('/web/errors.js');
            return cases.map(([message, mode]) => fieldOf(message, mode));
        }""",
        [[message, mode] for message, mode, _ in MESSAGES],
    )
    assert found == [field for _, _, field in MESSAGES]
    assert all(page.locator(f"#{field}").count() == 1 for field in found if field)


def test_a_lost_connection_is_said_and_retried(page):
    page.context.set_offline(True)
    page.fill("#steps", "4")
    page.click("#generate")
    page.wait_for_selector("#connection.lost")
    assert "Lost the connection" in page.inner_text("#connection")
    assert "connection was lost" in page.inner_text("#form-error")
    shot(page, "connection-lost")
    page.context.set_offline(False)
    page.wait_for_selector("#connection.back", timeout=10_000)
    assert "Connected again" in page.inner_text("#connection")


def test_behind_api_auth_the_browser_signs_in_and_the_page_works(browser, tmp_path):
    server = Server(Catalog(), settings_in(tmp_path, users={"ann": "secret"}))
    with serving(server) as url:
        # (without them, the page answers 401 with WWW-Authenticate: Basic, and a browser asks: test_web_routes.py)
        context = browser.new_context(http_credentials={"username": "ann", "password": "secret"})
        page = context.new_page()
        assert page.goto(url + "/").status == 200
        page.wait_for_function("() => document.getElementById('sampler_name').options.length > 1")  # its fetches too
        context.close()

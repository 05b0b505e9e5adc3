"""ldm-serve on a real socket, driven by the clients people point at it: webuiapi (AUTOMATIC1111's API) and the
openai package; progress, interrupt and skip while a generation runs; a client that goes away."""

import base64
import http.client
import io
import json
import socket
import threading
import time

import openai
import pytest
import webuiapi
from helpers import serving
from PIL import Image

from ldm import Pipeline
from ldm.outputs.png import png_bytes
from ldm.serve.catalog import Catalog
from ldm.serve.images import to_base64
from ldm.serve.server import Server, Settings

PROMPT = "a large red circle at the top left on a white background"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, port): ldm-serve with the built-in model, in a thread of this process."""
    folder = tmp_path_factory.mktemp("served")
    server = Server(Catalog(), Settings(outdir=folder, lora_dir=folder / "loras", embeddings_dir=folder / "none"))
    with serving(server) as url:
        yield server, int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def api(served):
    return webuiapi.WebUIApi(host="127.0.0.1", port=served[1])


@pytest.fixture(scope="module")
def library():
    pipe = Pipeline.load()
    pipe.hash_model()
    return pipe


def test_webuiapi_txt2img_img2img_and_png_info(api, library):
    r = api.txt2img(prompt=PROMPT, seed=1, steps=2, width=64, height=64)
    assert r.image.size == (64, 64) and r.info["seed"] == 1 and r.info["all_seeds"] == [1]
    assert "Steps: 2" in r.image.info["parameters"] and "Sampler: Euler a" in r.image.info["parameters"]
    expected = library.generate(
        library.request(prompt=PROMPT, seed=1, steps=2, guidance=7.0, sampler="euler_a"), progress=False
    )  # fmt: skip; webuiapi's defaults: Euler a, CFG 7
    assert r.image.tobytes() == expected.images[0].tobytes()
    assert api.png_info(r.image).parameters["Seed"] == "1"
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    edited = api.img2img(images=[r.image], mask_image=mask, denoising_strength=0.5, steps=2, width=64, height=64,
                         prompt="a small blue square", seed=4)  # fmt: skip
    assert edited.image.size == (64, 64) and edited.info["denoising_strength"] == 0.5
    assert "Mask blur: 4" in edited.image.info["parameters"]


def test_webuiapi_options_models_and_samplers(api):
    titles = api.util_get_model_names()
    assert len(titles) == 1 and titles[0].startswith("ldm-shapes.safetensors [")
    assert api.util_get_current_model() == titles[0]
    api.util_set_model("LDM-SHAPES")  # webuiapi finds the closest title, lower-cased
    assert api.get_options()["sd_model_checkpoint"] == titles[0]
    assert {"Euler a", "DPM++ 2M", "UniPC"} <= set(api.util_get_sampler_names())
    assert "karras" in [s["name"] for s in api.get_schedulers()]
    api.set_options({"show_progress_every_n_steps": 2})
    assert api.get_options()["show_progress_every_n_steps"] == 2
    api.set_options({"show_progress_every_n_steps": 1})


def generating(port: int, body: dict) -> tuple[threading.Thread, dict]:
    """POST /sdapi/v1/txt2img from a thread; the dict gets status, answer and seconds."""
    out: dict = {}

    def post():
        start = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        connection.request("POST", "/sdapi/v1/txt2img", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        out.update(status=response.status, answer=json.loads(response.read()), seconds=time.monotonic() - start)

    thread = threading.Thread(target=post)
    thread.start()
    return thread, out


def wait_for_step(api, at_least: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = api.get_progress()
        if progress["state"]["sampling_step"] >= at_least:
            return progress
        time.sleep(0.02)
    raise AssertionError("the generation never reached that step")


def test_progress_shows_steps_and_a_preview_and_interrupt_returns_the_picture_so_far(api, served):
    thread, out = generating(served[1], {"prompt": PROMPT, "seed": 2, "steps": 150})
    progress = wait_for_step(api, 2)
    assert 0 < progress["progress"] < 1 and progress["state"]["job_count"] == 1 and progress["eta_relative"] > 0
    assert progress["state"]["sampling_steps"] == 150 and progress["state"]["job"] == "txt2img"
    assert Image.open(io.BytesIO(base64.b64decode(progress["current_image"]))).size == (64, 64)
    assert api.interrupt() == {}
    thread.join(60)
    assert out["status"] == 200 and len(out["answer"]["images"]) == 1  # the batch, decoded where it stood
    assert json.loads(out["answer"]["info"])["steps"] == 150
    api.util_wait_for_ready()  # progress back at 0 with no job
    assert api.get_progress()["state"]["interrupted"] is False


def test_skip_ends_the_batch_and_goes_on_with_the_next(api, served, library):
    thread, out = generating(served[1], {"prompt": PROMPT, "seed": 30, "steps": 30, "n_iter": 2})
    wait_for_step(api, 2)
    api.skip()
    thread.join(120)
    assert out["status"] == 200 and json.loads(out["answer"]["info"])["all_seeds"] == [30, 31]
    second = library.generate(library.request(prompt=PROMPT, seed=31, steps=30), progress=False)
    assert out["answer"]["images"][1] == to_base64(second.images[0], second.infotexts[0])  # the next batch whole


def test_a_client_that_goes_away_takes_its_waiting_job_and_disturbs_no_one(api, served):
    server, port = served
    done = server.worker.done
    running, running_out = generating(port, {"prompt": PROMPT, "seed": 1, "steps": 120})  # outlasts the watch
    wait_for_step(api, 1)
    gone = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"prompt": PROMPT, "steps": 60}).encode()
    gone.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    time.sleep(0.3)
    gone.close()
    after, after_out = generating(port, {"prompt": PROMPT, "seed": 5, "steps": 2})
    running.join(120), after.join(120)
    assert running_out["status"] == 200 and after_out["status"] == 200
    assert json.loads(after_out["answer"]["info"])["all_seeds"] == [5]
    assert server.worker.done == done + 2  # the abandoned job never ran


def test_the_openai_client_generates_edits_and_reads_errors(served):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{served[1]}/v1", api_key="unused", max_retries=0)
    answer = client.images.generate(prompt=PROMPT, size="64x64", n=2, response_format="b64_json")
    assert len(answer.data) == 2 and all(d.b64_json for d in answer.data)
    png = png_bytes(Image.new("RGB", (64, 64), "white"))
    edited = client.images.edit(image=("in.png", png, "image/png"), prompt="a small blue square", n=1)
    assert len(edited.data) == 1
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.images.generate(prompt=PROMPT, size="huge")
    assert "size" in caught.value.message and caught.value.type == "invalid_request_error"
    assert [m.id for m in client.models.list()] == ["ldm-shapes"]

"""ldm-serve's routes in process (FastAPI's TestClient) with the built-in model: A1111's and OpenAI's shapes, the
same bytes as the library, and every bad request a 4xx with a message, after which the server still serves."""

import base64
import io
import json
import os
import shutil
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from ldm import Pipeline
from ldm.outputs.png import png_bytes
from ldm.serve.app import create_app
from ldm.serve.catalog import Catalog
from ldm.serve.limits import Limits
from ldm.serve.server import Server, Settings

PROMPT = "a large red circle at the top left on a white background"
# Every key webuiapi 0.9.17's txt2img() sends, at its defaults (nulls included): the server must take them all.
WEBUIAPI_TXT2IMG = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
    "prompt": "", "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
    "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 20, "cfg_scale": 7.0, "width": 512,
    "height": 512, "restore_faces": None, "tiling": None, "do_not_save_samples": False, "do_not_save_grid": False,
    "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
    "override_settings": {}, "override_settings_restore_afterwards": True, "sampler_name": "Euler a",
    "scheduler": "automatic", "sampler_index": "Euler a", "script_name": None, "script_args": [],
    "send_images": True, "save_images": False, "alwayson_scripts": {},
}  # fmt: skip


@pytest.fixture(scope="module")
def library():
    pipe = Pipeline.load()
    pipe.hash_model()
    return pipe


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def client(outdir):
    server = Server(Catalog(), Settings(outdir=outdir, lora_dir=outdir / "no-loras", embeddings_dir=outdir / "none"))
    with TestClient(create_app(server), raise_server_exceptions=False) as c:
        yield c


def b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def expected(library, **settings) -> list[str]:
    """What the library makes of these settings, as the server must send it: base64 PNG with its parameters."""
    result = library.generate(library.request(**settings), progress=False)
    return [base64.b64encode(png_bytes(i, t)).decode() for i, t in zip(result.images, result.infotexts, strict=True)]


def test_txt2img_takes_every_webuiapi_field_and_sends_the_librarys_bytes(client, library):
    body = {**WEBUIAPI_TXT2IMG, "prompt": PROMPT, "seed": 11, "steps": 4, "width": 64, "height": 64,
            "batch_size": 2, "n_iter": 2, "sampler_name": "DPM++ 2M", "scheduler": "karras",
            "a_future_field": 1}  # fmt: skip
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    settings = {"prompt": PROMPT, "seed": 11, "steps": 4, "guidance": 7.0, "width": 64, "height": 64,
                "batch_size": 2, "sampler": "dpmpp_2m", "karras": True}  # fmt: skip
    first, second = expected(library, **settings), expected(library, **{**settings, "seed": 13})
    assert answer["images"] == first + second  # n_iter: the next batch's seeds follow on
    info = json.loads(answer["info"])
    a1111_keys = {"prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
                  "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps",
                  "batch_size", "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash",
                  "sd_vae_name", "sd_vae_hash", "seed_resize_from_w", "seed_resize_from_h", "denoising_strength",
                  "extra_generation_params", "index_of_first_image", "infotexts", "styles", "job_timestamp",
                  "clip_skip", "is_using_inpainting_conditioning", "version"}  # fmt: skip
    assert a1111_keys <= set(info)
    assert info["seed"] == 11 and info["all_seeds"] == [11, 12, 13, 14] and info["sampler_name"] == "DPM++ 2M"
    assert info["sd_model_hash"] == library.model_info["model_hash"]
    assert decoded(answer["images"][3]).info["parameters"] == info["infotexts"][3]
    assert "Seed: 14" in info["infotexts"][3] and "Schedule type: Karras" in info["infotexts"][3]
    assert answer["parameters"]["prompt"] == PROMPT and "a_future_field" not in answer["parameters"]


def test_img2img_with_a_mask_sends_the_librarys_inpainting(client, library):
    init = decoded(expected(library, prompt=PROMPT, seed=5, steps=4)[0]).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 32, 64, 64))
    body = {"prompt": "a small blue square at the bottom right on a white background", "seed": 3, "steps": 4,
            "init_images": ["data:image/png;base64," + b64(init)], "mask": "data:image/png;base64," + b64(mask),
            "denoising_strength": 0.5, "mask_blur": 4, "inpainting_fill": 1, "inpaint_full_res": False,
            "include_init_images": False, "resize_mode": 0}  # fmt: skip
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    result = library.generate(library.request(prompt=body["prompt"], seed=3, steps=4, strength=0.5, mask_blur=4,
                                              width=64, height=64), image=init, mask=mask, progress=False)  # fmt: skip
    assert r.json()["images"] == [base64.b64encode(png_bytes(result.images[0], result.infotexts[0])).decode()]
    assert r.json()["parameters"]["init_images"] is None
    info = json.loads(r.json()["info"])
    assert info["denoising_strength"] == 0.5 and info["is_using_inpainting_conditioning"] is False


def test_the_hires_fields_run_the_hires_fix(client, library):
    body = {"prompt": PROMPT, "seed": 2, "steps": 3, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2,
            "denoising_strength": 0.6, "hr_upscaler": "Latent (nearest)"}  # fmt: skip
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    settings = {"prompt": PROMPT, "seed": 2, "steps": 3, "hires_scale": 2, "hires_steps": 2, "strength": 0.6,
                "hires_upscaler": "Latent (nearest)"}  # fmt: skip
    assert r.json()["images"] == expected(library, **settings)
    assert decoded(r.json()["images"][0]).size == (128, 128)


def test_sampler_names_come_in_any_case_or_as_ldm_names_them(client):
    for name, shown in (("euler a", "Euler a"), ("dpmpp_2m", "DPM++ 2M"), ("DPM++ 2M Karras", "DPM++ 2M")):
        r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 2, "sampler_name": name})
        assert r.status_code == 200 and json.loads(r.json()["info"])["sampler_name"] == shown
    assert "Schedule type: Karras" in json.loads(r.json()["info"])["infotexts"][0]


def test_png_info_reads_parameters_as_a1111_parses_them(client, library):
    image = expected(library, prompt=PROMPT, seed=1, steps=2)[0]
    r = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + image})
    assert r.status_code == 200
    parsed = r.json()["parameters"]
    assert parsed["Seed"] == "1" and parsed["Steps"] == "2" and parsed["Prompt"] == PROMPT
    assert parsed["Size-1"] == "64" and r.json()["info"].startswith(PROMPT)
    plain = client.post("/sdapi/v1/png-info", json={"image": b64(Image.new("RGB", (8, 8)))}).json()
    assert plain["info"] == "" and plain["parameters"] == {}


def test_listings_have_a1111s_shapes(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    assert {"Euler a", "DPM++ 2M", "DDIM", "PLMS"} <= {s["name"] for s in samplers}
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    assert [s["name"] for s in client.get("/sdapi/v1/schedulers").json()] == ["automatic", "karras"]
    models = client.get("/sdapi/v1/sd-models").json()
    assert len(models) == 1 and models[0]["title"] == f"ldm-shapes.safetensors [{models[0]['hash']}]"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == models[0]["title"]
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    assert "Latent (bicubic)" in [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert "Lanczos" in [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert client.get("/sdapi/v1/loras").json() == []
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    assert client.post("/sdapi/v1/interrupt").json() == {} and client.post("/sdapi/v1/skip").json() is None


def test_options_set_the_defaults_of_later_requests(client):
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "a_webui_option": 1}).json() is None
    try:
        r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": 1, "steps": 2})
        assert "Clip skip: 2" in json.loads(r.json()["info"])["infotexts"][0]
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 0}).status_code == 422
    finally:
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})


def test_openai_generations_and_edits(client, library):
    r = client.post("/v1/images/generations", json={"prompt": PROMPT, "n": 2, "size": "64x64", "model": "dall-e-3",
                                                    "response_format": "b64_json"})  # fmt: skip
    assert r.status_code == 200 and isinstance(r.json()["created"], int)
    assert [decoded(d["b64_json"]).size for d in r.json()["data"]] == [(64, 64)] * 2
    init = decoded(expected(library, prompt=PROMPT, seed=5, steps=4)[0]).convert("RGB")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # OpenAI: transparent = edit here
    files = {"image": ("init.png", png_bytes(init), "image/png"), "mask": ("mask.png", png_bytes(mask), "image/png")}
    r = client.post("/v1/images/edits", data={"prompt": "a small blue square", "n": "1"}, files=files)
    assert r.status_code == 200, r.text
    edited = np.asarray(decoded(r.json()["data"][0]["b64_json"]).convert("RGB")).astype(int)
    kept = np.asarray(init).astype(int)
    assert (edited[:, 32:] == kept[:, 32:]).all()  # outside the mask: the original pixels exactly
    assert np.abs(edited[:, :32] - kept[:, :32]).mean() > 1
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "ldm-shapes"


def png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header claiming this size, with almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


BAD = [
    ("txt2img", b"{not json", 422, "JSON object"),
    ("txt2img", b"[1, 2]", 422, "JSON object"),
    ("txt2img", {"steps": "many"}, 422, "steps"),
    ("txt2img", b'{"cfg_scale": NaN}', 422, "cfg_scale"),
    ("txt2img", b'{"denoising_strength": Infinity, "enable_hr": true}', 422, "denoising_strength"),
    ("txt2img", {"sampler_name": "Euler z"}, 404, "Sampler not found"),
    ("txt2img", {"scheduler": "exponential"}, 422, "scheduler"),
    ("txt2img", {"enable_hr": True, "sampler_index": "Euler", "hr_sampler_name": "DDIM"}, 422, "hr_sampler_name"),
    ("txt2img", {"enable_hr": True, "hr_sampler_name": "Euler"}, 422, "hr_sampler_name"),
    ("txt2img", {"width": 65}, 422, "multiple of 8"),
    ("txt2img", {"width": 4096, "height": 4096}, 422, "--max-pixels"),
    ("txt2img", {"steps": 151}, 422, "--max-steps"),
    ("txt2img", {"batch_size": 4, "n_iter": 5}, 422, "--max-images"),
    ("txt2img", {"prompt": "x" * 20001}, 422, "--max-prompt-chars"),
    ("txt2img", {"restore_faces": True}, 422, "restore_faces"),
    ("txt2img", {"script_name": "x/y/z plot"}, 422, "script_name"),
    ("txt2img", {"n_iter": 0}, 422, "n_iter"),
    ("txt2img", {"seed": -5}, 422, "seed"),
    ("txt2img", {"prompt": "<lora:../../etc/passwd:1>"}, 422, "no LoRA named"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "../secret.ckpt"}}, 422, "no model titled"),
    ("img2img", {"init_images": []}, 422, "init_images"),
    ("img2img", {"init_images": ["%%%"]}, 400, "not base64"),
    ("img2img", {"init_images": [base64.b64encode(b"hello").decode()]}, 400, "not a picture"),
    ("img2img", {"init_images": [base64.b64encode(png_with_size(20000, 20000)).decode()]}, 400, "pixels"),
    ("img2img", {"init_images": [base64.b64encode(png_with_size(64, 64)).decode()]}, 400, "not a picture"),
    ("img2img", {"init_images": ["data:image/png;base64,AAAA"], "resize_mode": 3}, 422, "resize_mode"),
    ("png-info", {"image": "@@"}, 400, "not base64"),
    ("png-info", {}, 422, "image"),
    ("options", {"sd_model_checkpoint": "/etc/passwd"}, 422, "no model titled"),
    ("options", {"show_progress_type": "Holographic"}, 422, "show_progress_type"),
]


@pytest.mark.parametrize(("route", "payload", "status", "words"), BAD)
def test_a_bad_request_is_a_4xx_with_a_message_and_the_next_one_is_served(client, route, payload, status, words):
    if isinstance(payload, bytes):
        r = client.post(f"/sdapi/v1/{route}", content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post(f"/sdapi/v1/{route}", json={"steps": 2, **payload})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"] and r.json()["error"]
    assert client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1}).status_code == 200


@pytest.mark.parametrize(
    ("payload", "words"),
    [({"n": 2}, "prompt"), ({"prompt": "x", "size": "big"}, "size"), ({"prompt": "x", "response_format": "url"},
     "b64_json"), ({"prompt": "x", "n": 0}, "n must"), ({"prompt": "x", "output_format": "gif"}, "output_format")],
)  # fmt: skip
def test_openai_errors_have_openais_shape(client, payload, words):
    r = client.post("/v1/images/generations", json=payload)
    assert 400 <= r.status_code < 500 and words in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_body_over_the_limit_is_413_whether_or_not_it_says_its_length(outdir):
    server = Server(Catalog(), Settings(outdir=outdir, limits=Limits(body_bytes=1000)))
    with TestClient(create_app(server)) as c:
        assert c.post("/sdapi/v1/txt2img", content=b"{" + b" " * 2000 + b"}").status_code == 413

        def chunks():
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"x" * 200
            yield b'"}'

        r = c.post("/sdapi/v1/txt2img", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "--max-body-bytes" in r.json()["detail"]
        assert c.get("/sdapi/v1/progress").status_code == 200


def test_credentials_guard_every_route(outdir):
    settings = Settings(outdir=outdir, users={"ann": "s3cret", "bob": "hunter2"}, api_key="sk-local")
    with TestClient(create_app(Server(Catalog(), settings))) as c:
        r = c.get("/sdapi/v1/options")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert c.get("/sdapi/v1/options", auth=("ann", "wrong")).status_code == 401
        assert c.get("/sdapi/v1/options", auth=("bob", "hunter2")).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer sk-local"}).status_code == 200
        r = c.post("/v1/images/generations", json={"prompt": "x"}, headers={"Authorization": "Bearer sk-other"})
        assert r.status_code == 401 and "credentials" in r.json()["error"]["message"]
        assert c.get("/docs").status_code == 401


def test_cors_is_off_unless_origins_are_given(client, outdir):
    origin = {"Origin": "http://evil.example"}
    assert "access-control-allow-origin" not in client.get("/sdapi/v1/options", headers=origin).headers
    settings = Settings(outdir=outdir, cors_origins=("http://app.example",))
    with TestClient(create_app(Server(Catalog(), settings))) as c:
        r = c.get("/sdapi/v1/options", headers={"Origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"


def test_save_images_writes_numbered_pngs_only_into_the_outputs_folder(client, outdir):
    body = {"prompt": PROMPT, "seed": 21, "steps": 2, "save_images": True, "batch_size": 2}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200
    saved = sorted((outdir / "txt2img-images").iterdir())
    assert [p.name for p in saved][-2:] == ["00000-21.png", "00001-22.png"]
    assert base64.b64encode(saved[-1].read_bytes()).decode() == r.json()["images"][1]


def test_a_generation_that_fails_is_its_own_error_and_the_worker_goes_on(client, monkeypatch):
    pipe = client.app.state.server.worker.pipe
    real = pipe.generate
    failures = iter([torch.OutOfMemoryError("CPU out of memory"), RuntimeError("a bug")])

    def failing(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe, "generate", failing)
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1})
    assert r.status_code == 503 and "out of memory" in r.json()["detail"] and "retry-after" in r.headers
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1})
    assert r.status_code == 500 and r.json()["detail"] == "a bug"
    assert client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1}).status_code == 200


def test_a_models_folder_lists_its_models_switches_by_name_and_keeps_links_inside(tmp_path, outdir, library):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(library.source, models / "shapes.safetensors")
    shutil.copy(library.source, models / "shapes-copy.safetensors")
    outside = tmp_path / "private.safetensors"
    shutil.copy(library.source, outside)
    os.symlink(outside, models / "leak.safetensors")
    with TestClient(create_app(Server(Catalog(models_dir=models), Settings(outdir=outdir)))) as c:
        listed = [m["model_name"] for m in c.get("/sdapi/v1/sd-models").json()]
        assert sorted(listed) == ["shapes", "shapes-copy"]  # the link out of the folder is not a model
        assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "leak.safetensors"}).status_code == 422
        assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "shapes-copy"}).json() is None
        assert c.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("shapes-copy.safetensors [")
        small = {"prompt": PROMPT, "seed": 1, "steps": 2, "width": 64, "height": 64}  # a copy has SD's defaults
        r = c.post("/sdapi/v1/txt2img", json=small)
        assert "Model: shapes-copy" in json.loads(r.json()["info"])["infotexts"][0]
        r = c.post("/sdapi/v1/txt2img", json={**small, "override_settings": {"sd_model_checkpoint": "shapes"}})
        infotext = json.loads(r.json()["info"])["infotexts"][0]
        assert "Model: shapes" in infotext and "Model: shapes-copy" not in infotext
        r = c.post("/sdapi/v1/txt2img", json=small)  # the override was for that request only
        assert "Model: shapes-copy" in json.loads(r.json()["info"])["infotexts"][0]
        keep = {"sd_model_checkpoint": "shapes"}
        c.post("/sdapi/v1/txt2img", json={**small, "override_settings": keep,
                                          "override_settings_restore_afterwards": False})  # fmt: skip
        assert c.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("shapes.safetensors")


def test_lora_tags_and_embeddings_come_only_from_their_folders(tmp_path, outdir, library):
    loras, embeddings, elsewhere = tmp_path / "loras", tmp_path / "embeddings", tmp_path / "elsewhere"
    for folder in (loras, embeddings, elsewhere):
        folder.mkdir()
    g = torch.Generator().manual_seed(0)
    key = "lora_unet_mid_block_attentions_0_proj_in"  # middle_block.1.proj_in, a 1x1 conv of 128 channels
    lora = {f"{key}.lora_down.weight": torch.randn(4, 128, 1, 1, generator=g),
            f"{key}.lora_up.weight": torch.randn(128, 4, 1, 1, generator=g),
            f"{key}.alpha": torch.tensor(4.0)}  # fmt: skip
    save_file(lora, loras / "bold.safetensors")
    save_file(lora, elsewhere / "outside.safetensors")
    os.symlink(elsewhere / "outside.safetensors", loras / "linked.safetensors")
    save_file({"emb_params": torch.randn(2, 64, generator=g)}, embeddings / "shapey.safetensors")
    save_file({"emb_params": torch.randn(2, 64, generator=g)}, elsewhere / "sneaky.safetensors")
    os.symlink(elsewhere / "sneaky.safetensors", embeddings / "sneaky.safetensors")
    settings = Settings(outdir=outdir, lora_dir=loras, embeddings_dir=embeddings)
    with TestClient(create_app(Server(Catalog(), settings))) as c:
        assert [entry["name"] for entry in c.get("/sdapi/v1/loras").json()] == ["bold"]
        assert list(c.get("/sdapi/v1/embeddings").json()["loaded"]) == ["shapey"]
        plain = {"prompt": PROMPT, "seed": 3, "steps": 2}
        r = c.post("/sdapi/v1/txt2img", json={**plain, "prompt": PROMPT + " <lora:bold:1> shapey"})
        assert r.status_code == 200, r.text
        infotext = json.loads(r.json()["info"])["infotexts"][0]
        assert "Lora hashes:" in infotext and "TI hashes:" in infotext
        assert r.json()["images"] != c.post("/sdapi/v1/txt2img", json=plain).json()["images"]
        r = c.post("/sdapi/v1/txt2img", json={**plain, "prompt": PROMPT + " <lora:linked:1>"})
        assert r.status_code == 422 and "no LoRA named 'linked'" in r.json()["detail"]


def test_the_command_refuses_bad_flags_in_one_line_and_warns_when_open_to_the_network(capsys, tmp_path):
    from ldm.cli.serve import main

    assert main(["--api-auth", "nopassword", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert "user:password" in capsys.readouterr().err
    assert main(["--listen", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "warning: listening on 0.0.0.0 with no --api-auth or --api-key" in err[0] and "does not exist" in err[1]
    assert main(["--max-steps", "0"]) == 2 and "at least 1" in capsys.readouterr().err
    # --quantize reaches the model's load: a combination it refuses is said in one line before the port opens
    assert main(["--quantize", "int8", "--dtype", "bfloat16"]) == 2
    assert "--quantize int8 is for a CPU in float32" in capsys.readouterr().err.splitlines()[-1]

"""ldm-serve: an HTTP server speaking AUTOMATIC1111's /sdapi/v1 and OpenAI's /v1/images (`pip install ldm[serve]`).

It loads the model before it listens (a broken one fails here, in one line), binds 127.0.0.1 unless --listen,
and on SIGTERM or Ctrl-C stops the running job at its next step, answers the waiting ones 503, and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from ldm.cli.parser import OneLineParser
from ldm.cli.prompt_options import EMBEDDINGS_DIR, LORA_DIR
from ldm.errors import ConfigError, LdmError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    from ldm.cpu.int8 import QUANTIZE
    from ldm.generate.preview import METHODS
    from ldm.models.attention import BACKENDS
    from ldm.runtime.offload import MODES
    from ldm.serve.limits import Limits

    p = OneLineParser(
        prog="ldm-serve", description="Serve a Stable Diffusion v1 model over HTTP (A1111 and OpenAI APIs)."
    )
    models = p.add_mutually_exclusive_group()
    models.add_argument("--checkpoint", type=Path, help="serve this .safetensors/.ckpt file or diffusers folder")
    models.add_argument("--models-dir", type=Path, help="serve every model in this folder, switched by name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860, A1111's)")
    p.add_argument("--listen", action="store_true", help="bind 0.0.0.0: reachable from the network")
    p.add_argument("--api-auth", help="user:password[,user2:password2]: HTTP Basic on every route")
    p.add_argument("--api-key", help="a Bearer key (OpenAI clients' api_key) that opens every route")
    p.add_argument("--cors-allow-origins", help="comma-separated origins allowed by CORS (default: CORS off)")
    p.add_argument("--outdir", type=Path, default=Path("outputs"), help="where save_images writes (default outputs)")
    p.add_argument("--lora-dir", type=Path, default=LORA_DIR, help=f"LoRAs for <lora:name:w> tags (default {LORA_DIR})")
    p.add_argument("--embeddings-dir", type=Path, default=EMBEDDINGS_DIR, help="textual-inversion embeddings")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="weights dtype")
    p.add_argument("--attention", choices=BACKENDS, help="attention backend")
    p.add_argument("--offload", choices=MODES, help="keep weights in CPU memory between uses")
    p.add_argument("--quantize", choices=QUANTIZE, help="CPU: the U-Net's weights in 8 bits (faster, less memory)")
    p.add_argument("--taesd", type=Path, help="a TAESD decoder for previews (the built-in model has its own)")
    p.add_argument("--preview", choices=METHODS, default="approx", help="live preview of /progress (default approx)")
    p.add_argument("--preview-every", type=int, default=1, help="a new preview every N steps (default 1)")
    d = Limits()
    limits = p.add_argument_group("limits (each request)")
    limits.add_argument("--max-body-bytes", type=int, default=d.body_bytes, help=f"default {d.body_bytes}")
    limits.add_argument("--max-pixels", type=int, default=d.pixels, help=f"width x height, default {d.pixels}")
    limits.add_argument("--max-steps", type=int, default=d.steps, help=f"default {d.steps}")
    limits.add_argument("--max-images", type=int, default=d.images, help=f"batch_size x n_iter, default {d.images}")
    limits.add_argument("--max-prompt-chars", type=int, default=d.prompt_chars, help=f"default {d.prompt_chars}")
    limits.add_argument("--max-image-pixels", type=int, default=d.image_pixels, help="an uploaded picture's pixels")
    limits.add_argument("--queue-depth", type=int, default=d.queue, help=f"jobs waiting, default {d.queue}")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except LdmError as e:
        print(f"ldm-serve: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    import torch

    try:
        import uvicorn

        from ldm.serve.app import create_app
    except ImportError as e:
        raise LdmError(f"ldm-serve needs the serve extra ({e.name} is missing): pip install 'ldm[serve]'") from None
    from ldm.serve.catalog import Catalog
    from ldm.serve.limits import Limits
    from ldm.serve.server import Server, Settings

    limits = Limits(body_bytes=args.max_body_bytes, pixels=args.max_pixels, steps=args.max_steps,
                    images=args.max_images, prompt_chars=args.max_prompt_chars, queue=args.queue_depth,
                    image_pixels=args.max_image_pixels)  # fmt: skip
    if min(vars(limits).values()) < 1 or args.preview_every < 1:
        raise ConfigError("limits and --preview-every must be at least 1")
    settings = Settings(
        device=args.device, dtype=getattr(torch, args.dtype) if args.dtype else None, attention=args.attention,
        offload=args.offload, quantize=args.quantize, taesd=args.taesd, lora_dir=args.lora_dir,
        embeddings_dir=args.embeddings_dir, outdir=args.outdir, limits=limits, users=parse_users(args.api_auth),
        api_key=args.api_key,
        cors_origins=tuple(o.strip() for o in (args.cors_allow_origins or "").split(",") if o.strip()),
        preview=args.preview, preview_every=args.preview_every,
    )  # fmt: skip
    host = "0.0.0.0" if args.listen else args.host
    if host not in LOOPBACK and not settings.users and settings.api_key is None:
        print(f"ldm-serve: warning: listening on {host} with no --api-auth or --api-key: anyone who can reach "
              "this port can use it", file=sys.stderr)  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    server = Server(Catalog(args.checkpoint, args.models_dir), settings)
    server.start()  # the model loads before the port opens
    config = uvicorn.Config(create_app(server), host=host, port=args.port, access_log=False, log_level="info")
    uvicorn_server = _stopping_first(uvicorn, config, server)
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn raises the signal again once it stopped: let that pass
        signal.signal(sig, lambda *_: None)
    uvicorn_server.run()
    return 0


def parse_users(text: str | None) -> dict[str, str]:
    """`user:pass,user2:pass2` -> {user: pass, ...} (A1111's --api-auth)."""
    users = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        user, sep, password = pair.strip().partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"--api-auth wants user:password pairs separated by commas, got {pair.strip()!r}")
        users[user] = password
    return users


def _stopping_first(uvicorn, config, server):
    """uvicorn's server that, on SIGTERM / Ctrl-C, first stops the worker: the running job at its next step."""

    class Stopping(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            server.worker.stop_taking()
            super().handle_exit(sig, frame)

    return Stopping(config)


if __name__ == "__main__":
    sys.exit(main())

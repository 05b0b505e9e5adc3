"""tools/train.py: what the U-Net is taught to output is what the sampler reads back."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import train  # noqa: E402

from ldm.sampling.guidance import CFGDenoiser  # noqa: E402
from ldm.sampling.schedule import alphas_cumprod  # noqa: E402


class Oracle(torch.nn.Module):
    """A "U-Net" that answers with the training target for the input it is shown."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target, self.scale = target, torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t, context):
        return self.target * self.scale


def test_a_perfect_v_model_denoises_to_the_training_image_even_from_pure_noise():
    a_bar = alphas_cumprod()
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for t, pure in ((999, True), (999, False), (500, False), (20, False)):
        a = a_bar[t]
        x_t = noise if pure else a.sqrt() * x0 + (1 - a).sqrt() * noise
        sigma = ((1 - a) / a).sqrt()
        for prediction in ("v_prediction", "epsilon"):
            if prediction == "epsilon" and pure:
                continue  # epsilon cannot say anything about x0 in pure noise: the reason for v here
            target = train.training_target(prediction, x_t, x0, noise, a)
            timestep = torch.tensor([t])
            denoiser = CFGDenoiser(Oracle(target), torch.zeros(3, 2, 2), None, 1.0, lambda s, t=timestep: t,
                                   prediction_type=prediction)  # fmt: skip
            # the sampler's x is x_t / sqrt(a): k-diffusion's x0 + sigma * noise
            torch.testing.assert_close(denoiser(x_t / a.sqrt(), sigma), x0, rtol=1e-4, atol=1e-4)


def test_a_tiny_v_prediction_run_writes_a_loadable_model_and_resumes(tmp_path, monkeypatch):
    from ldm import Pipeline

    out, run = tmp_path / "tiny.safetensors", tmp_path / "run"
    common = ["--out", str(out), "--run", str(run), "--dataset", "64", "--vae-steps", "2", "--decoder-steps", "2",
              "--batch", "4", "--vae-batch", "4", "--prediction", "v_prediction",
              "--pure-noise-fraction", "0.25"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["train.py", *common, "--steps", "2"])
    train.main()
    first = torch.load(run / "diffusion.pt", weights_only=True)
    assert first["step"] == 2
    monkeypatch.setattr(sys, "argv", ["train.py", *common, "--steps", "3"])
    train.main()  # resumes at step 2 and trains one more
    resumed = torch.load(run / "diffusion.pt", weights_only=True)
    assert resumed["step"] == 3
    # The same 3 steps without the interruption: the very same weights, so the resumed run went on from step 2.
    straight = tmp_path / "straight"
    monkeypatch.setattr(sys, "argv", ["train.py", *common, "--run", str(straight), "--out", str(tmp_path / "s.st"),
                                      "--steps", "3"])  # fmt: skip
    train.main()
    uninterrupted = torch.load(straight / "diffusion.pt", weights_only=True)
    for key in ("unet", "ema_unet", "text"):
        for name, value in uninterrupted[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=1e-6, msg=f"{key}.{name}")
    pipe = Pipeline.load(out)
    assert pipe.model.config.unet.prediction_type == "v_prediction"
    image = pipe("a small red circle at the top left", steps=2, width=64, height=64, seed=0, progress=False)[0]
    assert image.size == (64, 64)

    # Fine-tune the result: --init-from takes its VAE, U-Net, text encoder and latent scale.
    tuned = tmp_path / "tuned.safetensors"
    tune = ["--init-from", str(out), "--out", str(tuned), "--run", str(tmp_path / "run2"), "--dataset", "64",
            "--batch", "4", "--steps", "1"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["train.py", *tune])
    train.main()
    tuned_config = Pipeline.load(tuned).model.config
    assert tuned_config.vae.scale_factor == pipe.model.config.vae.scale_factor
    assert tuned_config.unet.prediction_type == "v_prediction"  # kept from the file, not reset to epsilon


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pure-noise-fraction", "0.2"], "needs --prediction v_prediction"),
        (["--prediction", "v_prediction", "--pure-noise-fraction", "1.5"], "must be in [0, 1)"),
        (["--init-from", "missing.safetensors"], "does not exist"),
        (["--init-from", __file__, "--vae-from", __file__], "drop --vae-from"),
        (["--init-from", __file__, "--unet-mult", "1,2"], "drop --unet-mult and --latent-std"),
        (["--init-from", __file__, "--latent-std", "0.5"], "drop --unet-mult and --latent-std"),
    ],
)
def test_bad_training_flags_are_one_line_errors(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.setattr(sys, "argv", ["train.py", "--run", str(tmp_path / "run"), *flags])
    with pytest.raises(SystemExit) as exited:
        train.main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before anything was written

import torch

from ldm.sampling.guidance import CFGDenoiser


class FakeUNet(torch.nn.Module):
    """eps = x * t / 1000 + mean of the context, for each context of each x row as ldm's U-Net takes a guided
    batch: records each call's (x rows, context rows)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.batches: list[tuple[int, int]] = []

    def forward(self, x, t, context):
        self.batches.append((x.shape[0], context.shape[0]))
        copies = context.shape[0] // x.shape[0]
        x, t = x.repeat(copies, 1, 1, 1), t.repeat(copies)
        return x * t[:, None, None, None] / 1000 + context.mean(dim=(1, 2))[:, None, None, None]


def timestep_of(sigma):
    return torch.tensor(500.0)


def test_cond_and_uncond_in_one_batched_call_and_the_guidance_formula():
    unet = FakeUNet()
    cond, uncond = torch.full((2, 3, 4), 2.0), torch.full((2, 3, 4), -1.0)
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor(3.0)
    out = CFGDenoiser(unet, cond, uncond, 7.5, timestep_of)(x, sigma)
    assert unet.batches == [(2, 4)]  # x once, both contexts
    x_in = x / (sigma**2 + 1) ** 0.5
    eps_cond, eps_uncond = x_in * 0.5 + 2.0, x_in * 0.5 - 1.0
    assert torch.allclose(out, x - sigma * (eps_uncond + 7.5 * (eps_cond - eps_uncond)))


def test_guidance_one_skips_the_uncond_half():
    unet = FakeUNet()
    cond = torch.full((2, 3, 4), 2.0)
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor(1.0)
    out = CFGDenoiser(unet, cond, torch.zeros_like(cond), 1.0, timestep_of)(x, sigma)
    assert unet.batches == [(2, 2)]
    assert torch.allclose(out, x - sigma * (x / 2**0.5 * 0.5 + 2.0))


def test_extra_input_channels_are_concatenated_to_x():
    seen = []

    class Recorder(FakeUNet):
        def forward(self, x, t, context):
            seen.append(x.shape)
            return super().forward(x[:, :4], t, context)

    mask = torch.zeros(1, 5, 8, 8)
    CFGDenoiser(Recorder(), torch.ones(1, 3, 4), torch.zeros(1, 3, 4), 5.0, timestep_of, concat=mask)(
        torch.randn(1, 4, 8, 8), torch.tensor(2.0)
    )
    assert seen == [torch.Size([1, 9, 8, 8])]

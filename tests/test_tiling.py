"""VAE tiling: tiles cover the picture, blend without seams, and the pipeline's options decode what it decodes."""

import torch
import torch.nn.functional as F

from ldm.runtime.tiling import tile_starts, tiled_decode


def local_decoder(z: torch.Tensor) -> torch.Tensor:
    """A decoder whose every output pixel depends only on nearby latents: tiling must reproduce it exactly."""
    up = F.interpolate(z[:, :3], scale_factor=8, mode="nearest")
    return torch.tanh(up + F.avg_pool2d(up, 5, stride=1, padding=2, count_include_pad=False))


def test_tiles_cover_every_latent_with_at_least_the_overlap():
    for length in (64, 65, 96, 113, 200, 256):
        starts = tile_starts(length, 64, 16)
        assert starts[0] == 0 and starts[-1] + 64 == length or length <= 64
        assert all(b - a <= 48 for a, b in zip(starts, starts[1:], strict=False))  # neighbours share >= 16 latents


def test_tiled_decode_equals_untiled_for_a_local_decoder():
    z = torch.randn(2, 4, 80, 150, generator=torch.Generator().manual_seed(0))
    tiled = tiled_decode(local_decoder, z, 8, tile=32, overlap=8)
    assert tiled.shape == (2, 3, 640, 1200)
    torch.testing.assert_close(tiled, local_decoder(z), atol=1e-5, rtol=0)


def test_blending_hides_tile_edges():
    # Each tile gets its own constant offset (what per-tile statistics do at worst); across the blended
    # overlap the step between neighbouring pixels stays a small fraction of the offset.
    calls = iter(range(100))

    def offset_decoder(z):
        return local_decoder(z) + 0.1 * next(calls)

    z = torch.zeros(1, 4, 64, 64)
    tiled = tiled_decode(offset_decoder, z, 8, tile=32, overlap=16)
    step = (tiled[..., 1:] - tiled[..., :-1]).abs().max()
    assert step < 0.1 / 16  # a 0.1 jump spread over 128 pixels of ramp


def test_small_images_are_decoded_in_one_piece():
    z = torch.randn(1, 4, 32, 40)
    torch.testing.assert_close(tiled_decode(local_decoder, z, 8), local_decoder(z), atol=0, rtol=0)

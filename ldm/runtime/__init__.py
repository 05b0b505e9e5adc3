"""How loaded models run: offload to a device, tiled decoding, and the one way to edit weights."""

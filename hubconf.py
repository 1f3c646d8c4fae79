"""torch.hub entry points: ``torch.hub.load("OWNER/naf-cli", "naf")`` gives naf-cli's NAF with weights.

    import torch
    naf = torch.hub.load("OWNER/naf-cli", "naf")                          # the default checkpoint
    naf = torch.hub.load("OWNER/naf-cli", "naf", checkpoint="release")    # the official weights
    hr = naf(image, lr_features, (448, 448))   # image [B, 3, H, W] in [0, 1], features [B, C, h, w]

From a clone: ``torch.hub.load("path/to/naf-cli", "naf", source="local")``.
"""

dependencies = ["torch", "timm", "safetensors"]


def naf(pretrained: bool = True, checkpoint: str | None = None):
    """NAF (Neighborhood Attention Filtering): upsamples any backbone's features, guided by the image.

    Args:
        pretrained: load weights (``False``: the architecture, randomly initialised).
        checkpoint: a name of ``naf models`` (``effnet-lite0-lite1``, ``effnet-lite0``, ``release``), a weights
            file or a URL; None: naf-cli's default checkpoint (``naf_cli.defaults.DEFAULT_NAF``).
    """
    from naf_cli.checkpoints import load_naf
    from naf_cli.modeling import NAF

    return load_naf(checkpoint) if pretrained else NAF().eval()

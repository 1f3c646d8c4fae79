import pickle

import pytest
import torch
import torch.nn.functional as F
from reference import brute_force_attention, rope_reference
from safetensors.torch import save_file

from naf_cli.checkpoints import load_naf, save_naf
from naf_cli.errors import ShapeError, WeightsError
from naf_cli.modeling import NAF
from naf_cli.modeling.guidance import guidance_size
from naf_cli.modeling.rope import RoPE2d


def spec_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """The key table of the architecture document, written out independently of the code."""
    shapes = {}
    for branch, k in (("encoder", 1), ("sem_encoder", 3)):
        prefix = f"image_encoder.{branch}"
        shapes[f"{prefix}.0.weight"] = (128, 3, k, k)
        shapes[f"{prefix}.0.bias"] = (128,)
        for block in (1, 2):
            for norm in ("norm1", "norm2"):
                shapes[f"{prefix}.{block}.{norm}.weight"] = (128,)
                shapes[f"{prefix}.{block}.{norm}.bias"] = (128,)
            for conv in ("conv1", "conv2"):
                shapes[f"{prefix}.{block}.{conv}.weight"] = (128, 128, k, k)
                shapes[f"{prefix}.{block}.{conv}.bias"] = (128,)
    shapes["image_encoder.rope.periods"] = (16,)
    return shapes


def release_format_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in spec_state_dict_shapes().items()}
    state["image_encoder.rope.periods"] = 100.0 ** (2 * torch.arange(16) / 32)
    return state


def test_state_dict_keys_and_shapes_match_the_spec():
    model = NAF()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == spec_state_dict_shapes()
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert sum(p.numel() for p in model.parameters()) == 662_528


def test_periods_buffer_follows_the_formula():
    periods = NAF().state_dict()["image_encoder.rope.periods"]
    torch.testing.assert_close(periods, torch.tensor([100 ** (2 * i / 32) for i in range(16)]))


def test_release_pth_loads_strictly(tmp_path):
    state = release_format_state()
    path = tmp_path / "naf_release.pth"
    torch.save(state, path)
    model = load_naf(path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_safetensors_round_trip(tmp_path):
    model = NAF()
    model.load_state_dict(release_format_state(1))
    save_naf(model, tmp_path / "w.safetensors", {"note": "test"})
    save_naf(model, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = load_naf(tmp_path / name)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoints_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"x": Payload()}, handle)
    with pytest.raises(WeightsError, match=r"evil\.pth: the pickle holds Python objects"):
        load_naf(path)


def test_wrong_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"foo": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match=r"other\.safetensors"):
        load_naf(path)
    with pytest.raises(WeightsError, match="does not exist"):
        load_naf(tmp_path / "missing.pth")


def test_channels_not_divisible_by_heads_fail_before_work():
    model = NAF().eval()
    with pytest.raises(ShapeError, match="not divisible by 4"):
        model(torch.rand(1, 3, 32, 32), torch.randn(1, 114, 4, 4), (32, 32))


def test_rope_matches_spec_reference():
    x = torch.randn(2, 256, 5, 7)
    torch.testing.assert_close(RoPE2d().eval()(x).double(), rope_reference(x), atol=1e-5, rtol=1e-5)


def test_rope_rescaling_only_in_training():
    rope = RoPE2d()
    x = torch.randn(1, 256, 6, 6)
    rope.eval()
    assert torch.equal(rope(x), rope(x))
    rope.train()
    torch.manual_seed(0)
    outs = [rope(x) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_guidance_size_rule():
    assert guidance_size((512, 512), (32, 32)) == (128, 128)
    assert guidance_size((128, 128), (32, 32)) is None
    assert guidance_size((600, 200), (40, 10)) == (40, 40)  # (min(600, 160, 40), min(200, 40, 160))
    assert guidance_size((300, 700), (50, 100)) == (200, 200)  # (min(300, 200, 400), min(700, 400, 200))


@pytest.mark.parametrize("out_size", [(24, 24), (19, 26)])
def test_forward_equals_spec_composition(out_size):
    """Encoder -> pooled keys -> brute-force window attention, assembled by hand."""
    torch.manual_seed(0)
    model = NAF().eval()
    model.load_state_dict(release_format_state(2))
    image = torch.rand(2, 3, 40, 44)
    features = torch.randn(2, 8, 6, 5)
    with torch.no_grad():
        out = model(image, features, out_size)
        normalised = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        enc = model.image_encoder
        g = torch.cat((enc.encoder(normalised), enc.sem_encoder(normalised)), 1)
        g = rope_reference(F.adaptive_avg_pool2d(g, out_size)).float()
        ref = brute_force_attention(g, F.adaptive_avg_pool2d(g, (6, 5)), features, 4, 9)
    assert out.shape == (2, 8, *out_size)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("image_size", [(1, 1), (1, 37), (29, 1), (2, 2)])
def test_any_image_size_down_to_one_pixel(image_size):
    """A 1-pixel side is repeated up to the 2 pixels the 3x3 reflect padding needs."""
    model = NAF().eval()
    model.load_state_dict(release_format_state(3))
    image = torch.rand(1, 3, *image_size)
    features = torch.randn(1, 8, 1, 3)
    with torch.no_grad():
        out = model(image, features, (4, 12))
        grown = F.interpolate(image, size=tuple(max(s, 2) for s in image_size), mode="nearest")
        expected = model(grown, features, (4, 12))
    assert out.shape == (1, 8, 4, 12) and torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)


def test_wrong_shapes_in_a_checkpoint_show_both_shapes(tmp_path):
    state = release_format_state()
    state["image_encoder.sem_encoder.0.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(WeightsError, match=r"image_encoder\.sem_encoder\.0\.weight: file \[64, 3, 3, 3\] vs model \[128, 3, 3, 3\]"):
        load_naf(tmp_path / "narrow.pth")

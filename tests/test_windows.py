import pytest
import torch
import torch.nn.functional as F

from naf_cli.modeling import windows

SIZES = [(32, 8), (30, 7), (7, 7), (5, 9), (100, 3), (17, 16), (1, 1), (3, 1)]


@pytest.mark.parametrize("n_out,n_low", SIZES)
def test_cell_of_is_nearest_neighbour_source_index(n_out, n_low):
    src = torch.arange(n_low, dtype=torch.float64)[None, None]
    nearest = F.interpolate(src, size=n_out, mode="nearest")[0, 0].long()
    assert torch.equal(windows.cell_of(n_out, n_low), nearest)


@pytest.mark.parametrize("n_out,n_low", SIZES)
def test_groups_cover_every_output_position_once(n_out, n_low):
    members, slot = windows.group_index(n_out, n_low)
    cells = windows.cell_of(n_out, n_low)
    # each position is found where the gather back reads it
    assert torch.equal(members[cells, slot], torch.arange(n_out))
    bounds = windows.cell_bounds(n_out, n_low)
    assert int(bounds[0]) == 0 and int(bounds[-1]) == n_out
    for i in range(n_low):
        assert set(range(int(bounds[i]), int(bounds[i + 1]))) == set(torch.nonzero(cells == i).flatten().tolist())


def test_window_shifts_inward_at_borders():
    assert windows.window_start(12, 9).tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 3]
    idx = windows.window_index(12, 9)
    assert idx.shape == (12, 9) and int(idx.min()) == 0 and int(idx.max()) == 11


def test_window_covers_whole_axis_when_grid_is_smaller_than_kernel():
    idx = windows.window_index(4, 9)
    assert idx.tolist() == [[0, 1, 2, 3]] * 4

import torch

from recsys_moe.modules import DotInteraction


def test_dot_interaction_matches_hand_computed_pairs():
    dims = [3, 2, 3, 2, 4, 3]
    x = torch.randn(5, sum(dims))
    parts = list(torch.split(x, dims, dim=1))
    out = DotInteraction(dims)(x)
    three = [0, 2, 5]
    two = [1, 3]
    expected = [(parts[a] * parts[b]).sum(1) for i, a in enumerate(three) for b in three[i + 1:]]
    expected += [(parts[a] * parts[b]).sum(1) for i, a in enumerate(two) for b in two[i + 1:]]
    torch.testing.assert_close(out, torch.stack(expected, 1))
    # the ONNX twin's path, from the separate feature tensors, gives exactly the same values
    assert torch.equal(DotInteraction(dims).forward_parts(parts), out)


def test_no_pairs_gives_empty_output():
    m = DotInteraction([4, 3])
    assert m.out_dim == 0
    assert m(torch.randn(2, 7)).shape == (2, 0)
    assert m.forward_parts([torch.randn(2, 4), torch.randn(2, 3)]).shape == (2, 0)

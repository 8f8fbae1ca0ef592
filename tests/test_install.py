"""The environment the install script builds: one fbgemm build beside torchrec, and a real EBC."""

import importlib.metadata as md

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor


def test_exactly_one_fbgemm_distribution():
    names = {d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()}
    fbgemm = sorted(n for n in names if n.startswith("fbgemm"))
    assert len(fbgemm) == 1, fbgemm
    expected = "fbgemm-gpu" if torch.cuda.is_available() else "fbgemm-gpu-cpu"
    assert fbgemm == [expected]


def test_embedding_bag_collection_pools_jagged_ids():
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name="item_table", embedding_dim=3, num_embeddings=5, feature_names=["hist"])]
    )
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["hist"], values=torch.tensor([1, 2, 4]), lengths=torch.tensor([2, 1]))
    out = ebc(kjt).to_dict()["hist"]
    w = ebc.embedding_bags["item_table"].weight
    torch.testing.assert_close(out[0], w[1] + w[2])
    torch.testing.assert_close(out[1], w[4])

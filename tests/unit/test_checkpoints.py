import numpy as np
import pytest
import torch

from fedtl.server.checkpoints import latest_checkpoint, load_checkpoint_into, save_checkpoint
from fedtl.shared.encoders import load_encoder
from fedtl.shared.update_modes import UpdateMode, exchanged_names


def test_checkpoint_roundtrip_resume_and_hf_folder(tmp_path, tiny_encoder_factory):
    enc = tiny_encoder_factory()
    names = exchanged_names([n for n, _ in enc.named_parameters()], UpdateMode.parse("last:1"))
    params = dict(enc.named_parameters())
    arrays = {n: params[n].detach().numpy() + 1.0 for n in names}
    for r in (1, 2, 3, 4):
        path = save_checkpoint(tmp_path, r, enc, arrays, keep=2)
    assert latest_checkpoint(tmp_path) == (4, path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("round-*")) == ["round-0003", "round-0004"]

    fresh = tiny_encoder_factory()
    load_checkpoint_into(fresh, path, names)
    loaded = dict(fresh.named_parameters())
    assert all(np.allclose(loaded[n].detach().numpy(), arrays[n]) for n in names)
    assert [n for n, _ in fresh.named_parameters()] == [n for n, _ in enc.named_parameters()]
    assert load_encoder(str(path)).hidden_size == enc.hidden_size  # also a plain Hugging Face folder


def test_a_checkpoint_without_the_exchanged_tensors_is_refused(tmp_path, tiny_encoder_factory):
    enc = tiny_encoder_factory()
    (tmp_path / "ck").mkdir()
    from safetensors.torch import save_file

    save_file({"unrelated": torch.zeros(1)}, tmp_path / "ck" / "model.safetensors")
    with pytest.raises(ValueError, match="lacks tensors"):
        load_checkpoint_into(enc, tmp_path / "ck", ["backbone.embeddings.word_embeddings.weight"])

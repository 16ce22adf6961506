import pytest
import torch

from fedtl.shared.encoders import EncoderError, load_encoder


def test_tiny_encoder_is_small_seeded_and_mean_pools(tiny_encoder_factory):
    a, b, c = tiny_encoder_factory(0), tiny_encoder_factory(0), tiny_encoder_factory(1)
    assert sum(p.numel() for p in a.parameters()) < 2_000_000
    assert torch.equal(a.state_dict()["backbone.encoder.layer.0.attention.self.query.weight"],
                       b.state_dict()["backbone.encoder.layer.0.attention.self.query.weight"])
    assert not torch.equal(a.state_dict()["backbone.embeddings.word_embeddings.weight"],
                           c.state_dict()["backbone.embeddings.word_embeddings.weight"])
    a.eval()
    ids = a.tokenize(["hello there world"], 16)
    x = torch.tensor(ids)
    padded = torch.cat([x, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones_like(x), torch.zeros(1, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():  # padding must not change a mean-pooled embedding
        assert torch.allclose(a(x, torch.ones_like(x)), a(padded, mask), atol=1e-5)


def test_truncation_length(tiny_encoder_factory):
    enc = tiny_encoder_factory()
    assert len(enc.tokenize(["word " * 100], 12)[0]) == 12


def test_local_hugging_face_folder_loads(tmp_path, tiny_encoder_factory):
    enc = tiny_encoder_factory()
    enc.backbone.save_pretrained(tmp_path)
    enc.tokenizer.save_pretrained(tmp_path)
    again = load_encoder(str(tmp_path))
    for key, value in enc.backbone.state_dict().items():
        assert torch.equal(again.backbone.state_dict()[key], value)


def test_bad_encoder_specs_explain_themselves(tmp_path):
    with pytest.raises(EncoderError, match="not 'minilm', 'tiny' or an existing folder"):
        load_encoder(str(tmp_path / "missing"))
    with pytest.raises(EncoderError, match="no config.json"):
        load_encoder(str(tmp_path))


@pytest.mark.integration
def test_minilm_loads_offline_and_embeds_meaningfully(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder("minilm")
    assert enc.hidden_size == 384 and enc.backbone.config.num_hidden_layers == 6
    enc.eval()
    texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Stock markets fell sharply today."]
    ids = enc.tokenize(texts, 32)
    width = max(map(len, ids))
    x = torch.tensor([s + [0] * (width - len(s)) for s in ids])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])
    with torch.no_grad():
        e = torch.nn.functional.normalize(enc(x, mask), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3

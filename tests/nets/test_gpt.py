import pytest
import torch

from genlab.nets.gpt import GPT, KVCache, sample_next


def tiny_gpt(block_size: int = 16, dropout: float = 0.0) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=11, block_size=block_size, n_layer=2, n_head=2, n_embd=16, dropout=dropout).eval()


def test_changing_a_future_token_never_changes_earlier_logits():
    net = tiny_gpt()
    idx = torch.randint(0, 11, (3, 16))
    changed = idx.clone()
    changed[:, 9:] = (idx[:, 9:] + 1 + torch.randint(0, 10, (3, 7))) % 11
    before, after = net(idx), net(changed)
    torch.testing.assert_close(after[:, :9], before[:, :9], rtol=0, atol=1e-6)
    assert (after[:, 9:] - before[:, 9:]).abs().amax() > 1e-3  # later positions do see the change


def test_cached_logits_equal_full_recomputation():
    net = tiny_gpt()
    idx = torch.randint(0, 11, (2, 12))
    full = net(idx)
    cache = KVCache(net.n_layer, net.block_size)
    parts = [net(idx[:, :5], cache)]  # prefill
    parts += [net(idx[:, t : t + 1], cache) for t in range(5, 9)]  # one token at a time
    parts.append(net(idx[:, 9:], cache))  # several new tokens after cached ones: explicit causal mask
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 12


@pytest.mark.parametrize("sampling", [{}, {"top_k": 4}, {"top_p": 0.8, "temperature": 0.7}])
def test_kv_cache_generation_gives_the_same_tokens_as_recomputation(sampling):
    net = tiny_gpt(block_size=16)
    prompt = torch.randint(0, 11, (4, 5))
    torch.manual_seed(1)
    cached = net.generate(prompt, 40, use_cache=True, **sampling)  # 45 > block_size: the window restarts
    torch.manual_seed(1)
    recomputed = net.generate(prompt, 40, use_cache=False, **sampling)
    assert cached.shape == (4, 45)
    assert torch.equal(cached[:, :5], prompt)
    assert torch.equal(cached, recomputed)


def test_generation_with_a_fixed_seed_is_deterministic():
    net = tiny_gpt()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(net.generate(prompt, 30))
    torch.manual_seed(8)
    other = net.generate(prompt, 30)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], other)


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]]).repeat(500, 1)
    top = torch.full((500,), 1)
    assert torch.equal(sample_next(logits, temperature=0), top)
    assert torch.equal(sample_next(logits, top_k=1), top)
    assert torch.equal(sample_next(logits, top_p=0.01), top)
    assert set(sample_next(logits, top_k=2).tolist()) == {1, 3}
    # softmax([3, 2, 1, 0, -1]) = .64, .23, .09, ...: p=0.8 keeps the two likeliest
    assert set(sample_next(logits, top_p=0.8).tolist()) == {1, 3}
    assert len(set(sample_next(logits).tolist())) == 5


def test_weights_are_tied_and_dropout_only_in_training():
    net = tiny_gpt(dropout=0.5)
    assert net.lm_head.weight is net.tok_emb.weight
    assert net.num_params(non_embedding=False) == sum(p.numel() for p in set(net.parameters()))
    idx = torch.randint(0, 11, (2, 8))
    torch.testing.assert_close(net(idx), net(idx))
    net.train()
    assert not torch.allclose(net(idx), net(idx))


def test_longer_than_block_size_is_an_error():
    with pytest.raises(ValueError, match="block_size 16"):
        tiny_gpt()(torch.zeros(1, 17, dtype=torch.long))

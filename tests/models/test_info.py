"""Model cost summaries: parameters, FLOPs and KV-cache bytes against hand-computed values."""

from __future__ import annotations

from click.testing import CliRunner

from attnlab.cli.main import cli
from attnlab.models import GPT, GPTConfig, from_preset
from attnlab.models.info import model_info


def test_gpt2_figures():
    info = model_info(from_preset("gpt2"))
    assert info.total == 124_439_808
    assert info.params["blocks (12 x)"] == 85_054_464 and info.params["head (tied)"] == 0
    assert info.embedding == 50257 * 768 + 1024 * 768
    per_block = 4 * 768 * 768 + 2 * 768 * 3072  # q, k, v, out + MLP up and down
    assert info.flops_linear == 2 * (12 * per_block + 50257 * 768)
    assert info.flops_attention == 12 * 4 * 768 * 1024  # layers x 4 x C x T
    assert info.kv_bytes["fp32"] == 12 * 2 * 768 * 4
    assert info.kv_bytes["bf16"] == 12 * 2 * 768 * 2


def test_grouped_query_heads_shrink_the_cache_only():
    config = dict(vocab_size=100, max_len=64, n_layer=3, n_head=8, dim=64)
    full = model_info(GPT(GPTConfig(**config)), context=16)
    grouped = model_info(GPT(GPTConfig(**config, n_kv_head=2)), context=16)
    assert grouped.kv_bytes["fp32"] * 4 == full.kv_bytes["fp32"] == 3 * 2 * 64 * 4
    assert grouped.flops_attention == full.flops_attention == 3 * 4 * 64 * 16


def test_encoder_decoder_and_encoders():
    info = model_info(from_preset("transformer-base"))
    assert info.params["head (tied)"] == 0 and "tgt_tok" not in info.params
    assert info.kv_bytes["fp32"] == info.cross_kv_bytes["fp32"] == 6 * 2 * 512 * 4
    bert = model_info(from_preset("bert-base"))
    assert bert.kv_bytes == {}  # encoders keep no cache
    assert bert.flops_linear > 2 * 30522 * 768  # the tied masked-LM decoder counts


def test_cli_info():
    result = CliRunner().invoke(cli, ["info", "vit-tiny", "--context", "197"])
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "5,717,416" in result.output
    bad = CliRunner().invoke(cli, ["info", "gtp2"])
    assert bad.exit_code == 2
    assert "source: expected a model preset" in bad.output and "did you mean 'gpt2'" in bad.output


def test_kernel_attention_reports_its_running_state_and_local_its_window():
    from attnlab.models import GPT, GPTConfig
    from attnlab.models.info import model_info

    tiny = dict(vocab_size=50, max_len=256, n_layer=2, n_head=4, dim=32, position="rope")
    linear = GPT(GPTConfig(**tiny, attention="linear"))
    info = model_info(linear)
    caches = linear.make_caches(1, 256)
    assert info.kv_bytes == {} and info.state_bytes == sum(c.S.nbytes + c.z.nbytes for c in caches)
    assert "running state per sequence" in info.format() and "linear attention" in info.name
    softmax, local = GPT(GPTConfig(**tiny)), GPT(GPTConfig(**tiny, attention="local", window=16))
    assert model_info(softmax).flops_attention == 16 * model_info(local).flops_attention
    assert model_info(linear).flops_attention == model_info(linear, context=64).flops_attention

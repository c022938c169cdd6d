"""Detecting fast bf16 (CPU flags, a confirming measurement, the ATTNLAB_BF16 override), precision
names, and precision "auto" in training: bf16 autocast on a CPU that is fast at it."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from click.testing import CliRunner

from attnlab import precision
from attnlab.cli.main import cli
from attnlab.train import trainer
from attnlab.train.config import TrainConfig

INTEL = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""

AMD = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse2 avx avx2 fma sha_ni
"""

ARM = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes sha2 crc32 atomics fphp asimdhp bf16 i8mm
CPU implementer\t: 0x41
"""


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """No override from the environment, and no measurement cached across tests."""
    monkeypatch.delenv(precision.OVERRIDE_VAR, raising=False)
    precision._cpu_speedup.cache_clear()
    yield
    precision._cpu_speedup.cache_clear()


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """``cpu(text)``: /proc/cpuinfo reads as ``text`` for the rest of the test."""

    def use(text: str):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO", path)

    return use


@pytest.fixture
def measured(monkeypatch):
    """``measured(speedup)``: measure_speedup returns ``speedup``, counting its calls in
    ``measured.calls``; ``measured(None)``: a call fails the test."""

    class Fake:
        calls = 0

        def __call__(self, speedup):
            def fake(*args, **kwargs):
                if speedup is None:
                    pytest.fail("measure_speedup ran")
                Fake.calls += 1
                return speedup

            monkeypatch.setattr(precision, "measure_speedup", fake)

    return Fake()


def test_flags_and_model_are_read_from_cpuinfo(tmp_path):
    for name, text in (("intel", INTEL), ("arm", ARM)):
        (tmp_path / name).write_text(text)
    flags = precision.cpu_flags(tmp_path / "intel")
    assert {"avx2", "avx512f", "avx512_bf16", "amx_bf16"} <= flags and "avx512_vnni" not in flags
    assert precision.cpu_model(tmp_path / "intel") == (
        "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    )
    assert precision.bf16_flags(tmp_path / "intel") == ["amx_bf16", "avx512_bf16"]
    assert {"asimd", "bf16"} <= precision.cpu_flags(tmp_path / "arm")  # aarch64 "Features"
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()  # macOS, Windows


def test_no_bf16_flags_means_no_without_measuring(cpu, measured):
    cpu(AMD)
    measured(None)
    assert precision.fast_bf16("cpu") is False
    assert precision.resolve_dtype("auto", "cpu") == torch.float32
    assert precision.bf16_capability("cpu") == (
        "AMD EPYC 7B13 64-Core Processor: avx2, no avx512_bf16/amx_bf16 (bf16 not accelerated)"
    )


def test_bf16_flags_are_confirmed_by_one_measurement_per_process(cpu, measured):
    cpu(INTEL)
    measured(4.0)
    assert precision.fast_bf16("cpu") is True
    assert precision.fast_bf16(torch.device("cpu")) is True
    assert precision.resolve_dtype("auto", "cpu") == torch.bfloat16
    described = precision.bf16_capability("cpu")
    assert described.startswith("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz: avx512f, ")
    assert "amx_bf16, avx512_bf16 (bf16 accelerated: matmul 4.0x fp32)" in described
    assert measured.calls == 1


def test_bf16_flags_without_the_speed_mean_no(cpu, measured):
    cpu(INTEL)
    measured(1.1)  # below MIN_SPEEDUP: bf16 kernels that do not pay
    assert precision.fast_bf16("cpu") is False
    assert precision.resolve_dtype("auto", "cpu") == torch.float32
    assert "not faster than fp32" in precision.bf16_capability("cpu")


def test_override_forces_the_answer_without_measuring(cpu, measured, monkeypatch):
    measured(None)
    cpu(AMD)
    monkeypatch.setenv("ATTNLAB_BF16", "1")
    assert precision.fast_bf16("cpu") is True and precision.fast_bf16("cuda") is True
    assert precision.resolve_dtype("auto", "cpu") == torch.bfloat16
    assert "ATTNLAB_BF16=1 forces bf16 on" in precision.bf16_capability("cpu")
    cpu(INTEL)
    monkeypatch.setenv("ATTNLAB_BF16", "0")
    assert precision.fast_bf16("cpu") is False
    assert precision.resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setenv("ATTNLAB_BF16", "yes")
    with pytest.raises(ValueError, match=r"ATTNLAB_BF16: expected 0 or 1 \(or unset\), got 'yes'"):
        precision.fast_bf16("cpu")


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("fp32", torch.float32),
        ("float32", torch.float32),
        ("bf16", torch.bfloat16),
        ("BFloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("float16", torch.float16),
    ],
)
def test_resolve_dtype_names(name, dtype, measured):
    measured(None)  # an explicit name never measures
    assert precision.resolve_dtype(name, "cpu") == dtype


def test_resolve_dtype_errors_name_dtype_expected_and_given():
    with pytest.raises(ValueError, match=r"dtype: expected one of auto, fp32, .*got 'int8'"):
        precision.resolve_dtype("int8", "cpu")
    with pytest.raises(TypeError, match=r"dtype: expected one of auto, .*got dtype"):
        precision.resolve_dtype(torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"device: expected a device .*got 'gpu0'"):
        precision.resolve_dtype("auto", "gpu0")


def test_measurement_is_the_median_of_interleaved_pairs(monkeypatch):
    """With made-up times: a preempted pair does not decide, and emulated bf16 (slow already at
    the 128 probe) stops the measurement before the larger matmuls."""
    threads = torch.get_num_threads()
    for bf16_times, expected, sizes in (
        ([0.25, 0.25, 10.0, 0.25, 0.25], 4.0, {128, 512}),  # one bf16 sample preempted
        ([10.0], 0.1, {128}),  # emulated: stops after the probe
    ):
        seen, times = [], iter(bf16_times * 20)

        def fake(a, seen=seen, times=times):
            seen.append((a.shape[0], torch.get_num_threads()))
            return next(times) if a.dtype == torch.bfloat16 else 1.0

        monkeypatch.setattr(precision, "_time_matmul", fake)
        assert precision.measure_speedup(size=512) == pytest.approx(expected)
        assert {n for n, _ in seen} == sizes
        assert {t for _, t in seen} == {1}  # one thread: no waits for a busy thread pool
        assert torch.get_num_threads() == threads


def test_measurement_runs_and_restores_threads():
    threads = torch.get_num_threads()
    speedup = precision.measure_speedup()
    assert speedup > 0 and math.isfinite(speedup)
    assert torch.get_num_threads() == threads


def _autocast_state(config: TrainConfig) -> tuple[bool, torch.dtype]:
    """Whether the run's autocast context autocasts on the CPU, and the dtype of a matmul in it."""
    with trainer.autocast_for(config, torch.device("cpu"))():
        enabled = torch.is_autocast_enabled("cpu")
        return enabled, (torch.ones(2, 2) @ torch.ones(2, 2)).dtype


def test_auto_precision_autocasts_to_bf16_on_a_cpu_fast_at_it(monkeypatch):
    auto = TrainConfig(device="cpu", precision="auto")
    monkeypatch.setenv("ATTNLAB_BF16", "1")
    assert _autocast_state(auto) == (True, torch.bfloat16)
    assert _autocast_state(TrainConfig(device="cpu", precision="fp32")) == (False, torch.float32)
    monkeypatch.setenv("ATTNLAB_BF16", "0")
    assert _autocast_state(auto) == (False, torch.float32)
    assert _autocast_state(TrainConfig(device="cpu", precision="bf16")) == (True, torch.bfloat16)


def test_auto_precision_follows_detection_on_this_cpu(cpu, measured):
    cpu(AMD)
    measured(None)
    assert _autocast_state(TrainConfig(device="cpu")) == (False, torch.float32)
    precision._cpu_speedup.cache_clear()
    cpu(INTEL)
    measured(5.0)
    assert _autocast_state(TrainConfig(device="cpu")) == (True, torch.bfloat16)


def test_precision_setting_takes_dtype_names_and_refuses_fp16():
    assert TrainConfig(precision="bfloat16").precision == "bf16"
    assert TrainConfig(precision="float32").precision == "fp32"
    with pytest.raises(ValueError, match=r"precision: expected auto, fp32, bf16, .*got 'fp16'"):
        TrainConfig(precision="fp16")


@pytest.fixture
def _keep_threads():
    """The run's ``threads=1`` sets torch's thread count for the process; restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_run_trains_under_forced_bf16_autocast_on_cpu(monkeypatch, tmp_path, _keep_threads):
    monkeypatch.setenv("ATTNLAB_BF16", "1")
    seen = []
    real = trainer.autocast_for

    def spy(config, device):
        factory = real(config, device)

        @contextlib.contextmanager
        def entered():
            with factory():
                seen.append((torch.ones(2, 2) @ torch.ones(2, 2)).dtype)
                yield

        return entered

    monkeypatch.setattr(trainer, "autocast_for", spy)
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}." for i in range(400)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines))
    run = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "train", "--preset", "shakespeare-char", "model.n_layer=1", "model.n_head=2",
            "model.dim=32", "block_size=32", "batch_size=4", "warmup_steps=1", "eval_batches=1",
            "log_every=2", "sample_length=0", "max_steps=6", "eval_every=6", "device=cpu",
            "threads=1",
            f"corpus={corpus}", f"cache_dir={tmp_path / 'cache'}", "--out", str(run),
            "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {torch.bfloat16}  # every step and evaluation in bf16
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert train[-1]["loss"] < train[0]["loss"]
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "auto"


def test_backends_names_bf16_support_and_the_auto_precision(monkeypatch, cpu):
    cpu(AMD)
    result = CliRunner().invoke(cli, ["backends"])
    assert result.exit_code == 0, result.output
    assert (
        "bf16: AMD EPYC 7B13 64-Core Processor: avx2, no avx512_bf16/amx_bf16 "
        "(bf16 not accelerated); precision auto picks fp32"
    ) in result.output
    monkeypatch.setenv("ATTNLAB_BF16", "1")
    result = CliRunner().invoke(cli, ["backends"])
    assert result.exit_code == 0, result.output
    assert "ATTNLAB_BF16=1 forces bf16 on; precision auto picks bf16" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without a CUDA device")
def test_no_cuda_device_means_no_bf16_on_cuda():
    assert precision.fast_bf16("cuda") is False
    assert precision.resolve_dtype("auto", "cuda") == torch.float32
    assert precision.bf16_capability("cuda") == "no CUDA device (bf16 not accelerated)"


@pytest.mark.gpu
def test_cuda_auto_is_bf16_exactly_on_gpus_with_native_bf16(measured):
    measured(None)  # a GPU is never timed
    native = torch.cuda.get_device_capability(0)[0] >= 8
    assert precision.fast_bf16("cuda:0") is native
    assert precision.resolve_dtype("auto", "cuda") == (torch.bfloat16 if native else torch.float32)
    assert torch.cuda.get_device_name(0) in precision.bf16_capability("cuda:0")
    config = TrainConfig(device="cuda", precision="auto")
    with trainer.autocast_for(config, torch.device("cuda"))():
        assert torch.is_autocast_enabled("cuda") is native

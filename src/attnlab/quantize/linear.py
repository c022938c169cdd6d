"""Weight-only quantized replacements for ``nn.Linear``: int8 per output channel or per group,
int4 per group.

Both keep ``in_features``, ``out_features`` and the floating-point ``bias``; activations stay in
floating point. ``weight`` is a read-only property giving the dequantized matrix (N, K), so code
that asks a layer for its weight's dtype or device keeps working; ``dequantize`` is the same
reference that every fast path is tested against.

State dict: int8 stores ``weight_int8`` (N, K) int8 and ``scales`` (N,) fp32 per output channel,
or (N, K / G) fp32 with ``group_size`` G (the layout of GGUF's Q8_0 blocks); int4 stores
``weight_int4`` (N, K / 2) uint8, two codes 0..15 a byte (even column in the low nibble), and
``scales_and_zeros`` (K / G, N, 2) fp32, the layout of PyTorch's int4 kernels. The kernel's
packed layout is rebuilt from the codes after loading or moving. A state dict loads into a
model quantized the same way, and fails (missing ``weight`` keys) in a floating-point one
instead of loading as garbage.

``from_quantized`` builds a layer from codes and scales already computed (a GGUF file's blocks,
or empty tensors that a state dict then fills) without quantizing anything.

Shapes: N output features, K input features, G group size, M rows of the activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.quantize import kernels


def check_group_size(group_size: int | None, in_features: int, mode: str) -> None:
    """ValueError naming ``group_size`` unless it suits a layer of ``in_features`` columns:
    int4 needs an even divisor (two codes a byte); int8 a divisor, or None for per channel."""
    if mode == "int8" and group_size is None:
        return
    even = mode == "int4"
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, int)
        or group_size < 1
        or (even and group_size % 2)
        or in_features % group_size
    ):
        what = "an even divisor" if even else "a divisor"
        raise ValueError(
            f"group_size: expected {what} of in_features={in_features} for {mode}, "
            f"got {group_size!r}"
        )


def _check_tensor(name: str, t: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if tuple(t.shape) != shape or t.dtype != dtype:
        raise ValueError(f"{name}: expected shape {shape} {dtype}, got {tuple(t.shape)} {t.dtype}")


class _QuantizedLinear(nn.Module):
    mode = ""

    def __init__(self, in_features: int, out_features: int, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self._cast: dict[str, Tensor] = {}  # scales in the kernel's activation dtype

    def _scales_as(self, name: str, dtype: torch.dtype) -> Tensor:
        """Buffer ``name`` in ``dtype``, converted once rather than at every call."""
        cast = self._cast.get(name)
        if cast is None or cast.dtype != dtype:
            cast = self._cast[name] = getattr(self, name).to(dtype)
        return cast

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cast = {}  # new scales
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._cast = {}  # moved or cast
        return super()._apply(fn, recurse)

    @property
    def weight(self) -> Tensor:
        """The dequantized weight (N, K) in fp32."""
        return self.dequantize()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        raise NotImplementedError

    def _matmul(self, x2d: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x: expected last dim in_features={self.in_features}, got {tuple(x.shape)}"
            )
        x2d = x.reshape(-1, self.in_features)  # (..., K) -> (M, K)
        y = self._matmul(x2d)  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, mode={self.mode}"
        )


class Int8Linear(_QuantizedLinear):
    """int8 weights with symmetric scales: W ≈ q * s, q in [-127, 127].

    One scale per output channel by default; with ``group_size`` G, one per group of G input
    columns of each output channel (the layout of GGUF's Q8_0, G = 32). PyTorch's int8 kernel
    takes per-channel scales only, so a group-wise layer always dequantizes then multiplies
    (see :mod:`attnlab.quantize.kernels`).
    """

    mode = "int8"
    OP = "_weight_int8pack_mm"

    def __init__(
        self, weight: Tensor, bias: Tensor | None = None, *, group_size: int | None = None
    ) -> None:
        n, k = weight.shape
        check_group_size(group_size, k, "int8")
        super().__init__(k, n, bias)
        self.group_size = group_size
        w = weight.detach().float()
        if group_size is not None:
            w = w.reshape(n, k // group_size, group_size)  # (N, K/G, G)
        tiny = torch.finfo(torch.float32).tiny
        scales = (w.abs().amax(dim=-1) / 127).clamp(min=tiny)  # (N,) or (N, K/G)
        q = (w / scales[..., None]).round().clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", q.reshape(n, k).contiguous())
        self.register_buffer("scales", scales)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None) -> Int8Linear:
        return cls(linear.weight, linear.bias, group_size=group_size)

    @classmethod
    def from_quantized(
        cls,
        weight_int8: Tensor,
        scales: Tensor,
        bias: Tensor | None = None,
        *,
        group_size: int | None = None,
    ) -> Int8Linear:
        """A layer holding ``weight_int8`` (N, K) int8 and ``scales`` ((N,) fp32, or (N, K / G)
        with ``group_size`` G) as they are: W = q * s."""
        n, k = weight_int8.shape
        check_group_size(group_size, k, "int8")
        want = (n,) if group_size is None else (n, k // group_size)
        _check_tensor("weight_int8", weight_int8, (n, k), torch.int8)
        _check_tensor("scales", scales, want, torch.float32)
        layer = cls.__new__(cls)
        _QuantizedLinear.__init__(layer, k, n, bias)
        layer.group_size = group_size
        layer.register_buffer("weight_int8", weight_int8)
        layer.register_buffer("scales", scales)
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return self._dequantize(self.weight_int8, self.scales).to(dtype)  # (N, K)

    def rows(self, index: Tensor) -> Tensor:
        """The dequantized rows ``W[index]`` (..., K) in the scales' dtype (fp32 unless the
        model was cast), reading only those rows (the lookup of an embedding tied to this
        layer)."""
        return self._dequantize(self.weight_int8[index], self.scales[index])

    def _dequantize(self, q: Tensor, scales: Tensor) -> Tensor:
        """Codes (..., K) and their scales ((...,) or (..., K / G)) -> (..., K) in the scales'
        dtype."""
        if self.group_size is None:
            return q.to(scales.dtype) * scales[..., None]
        g = self.group_size
        q = q.reshape(*q.shape[:-1], -1, g).to(scales.dtype)  # (..., K/G, G)
        return (q * scales[..., None]).flatten(-2)

    def _matmul(self, x2d: Tensor) -> Tensor:
        x = None
        if self.group_size is None and kernels.use_kernel(x2d, self.OP):
            x = kernels.kernel_input(x2d, self.OP)
        if x is not None:
            y = kernels.int8_matmul(x, self.weight_int8, self._scales_as("scales", x.dtype))
            return y.to(x2d.dtype)
        return F.linear(x2d, self.dequantize(x2d.dtype))

    def extra_repr(self) -> str:
        group = "" if self.group_size is None else f", group_size={self.group_size}"
        return super().extra_repr() + group


class Int4Linear(_QuantizedLinear):
    """int4 weights with an asymmetric scale and zero per group of ``group_size`` input columns.

    The codes q in 0..15 dequantize as ``(q - 8) * scale + zero`` (the convention of PyTorch's
    int4 kernels, gpt-fast and torchao), where each group's range [min, max] maps onto 0..15.
    """

    mode = "int4"
    OP = "_weight_int4pack_mm_for_cpu"

    def __init__(self, weight: Tensor, bias: Tensor | None = None, *, group_size: int = 128):
        n, k = weight.shape
        check_group_size(group_size, k, "int4")
        super().__init__(k, n, bias)
        self.group_size = group_size
        w = weight.detach().float().reshape(n, k // group_size, group_size)  # (N, K/G, G)
        low, high = w.amin(dim=-1), w.amax(dim=-1)  # (N, K/G)
        scales = ((high - low) / 15).clamp(min=1e-6)
        zeros = low + 8 * scales  # value of code 8
        q = ((w - low[..., None]) / scales[..., None]).round().clamp(0, 15)
        self.register_buffer("weight_int4", _pack_pairs(q.to(torch.uint8).reshape(n, k)))
        sz = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()  # (K/G, N, 2)
        self.register_buffer("scales_and_zeros", sz)
        self._packed: Tensor | None = None  # kernel layout, built on first use

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> Int4Linear:
        return cls(linear.weight, linear.bias, group_size=group_size)

    @classmethod
    def from_quantized(
        cls,
        weight_int4: Tensor,
        scales_and_zeros: Tensor,
        bias: Tensor | None = None,
        *,
        group_size: int,
    ) -> Int4Linear:
        """A layer holding ``weight_int4`` (N, K / 2) uint8 (even column in the low nibble) and
        ``scales_and_zeros`` (K / G, N, 2) fp32 as they are: W = (q - 8) * scale + zero."""
        n, k = weight_int4.shape[0], 2 * weight_int4.shape[1]
        check_group_size(group_size, k, "int4")
        _check_tensor("weight_int4", weight_int4, (n, k // 2), torch.uint8)
        want = (k // group_size, n, 2)
        _check_tensor("scales_and_zeros", scales_and_zeros, want, torch.float32)
        layer = cls.__new__(cls)
        _QuantizedLinear.__init__(layer, k, n, bias)
        layer.group_size = group_size
        layer.register_buffer("weight_int4", weight_int4)
        layer.register_buffer("scales_and_zeros", scales_and_zeros)
        layer._packed = None
        return layer

    def codes(self) -> Tensor:
        """The int4 codes (N, K) as uint8 in 0..15."""
        return _unpack(self._bytes())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        sz = self.scales_and_zeros.transpose(0, 1)  # (N, K/G, 2)
        return self._dequantize(self._bytes(), sz).to(dtype)  # (N, K)

    def rows(self, index: Tensor) -> Tensor:
        """The dequantized rows ``W[index]`` (..., K) in the scales' dtype (fp32 unless the
        model was cast), reading only those rows (the lookup of an embedding tied to this
        layer)."""
        sz = self.scales_and_zeros[:, index].movedim(0, -2)  # (..., K/G, 2)
        return self._dequantize(self._bytes()[index], sz)

    def _dequantize(self, packed: Tensor, sz: Tensor) -> Tensor:
        """Packed codes (..., K / 2) and scales and zeros (..., K / G, 2) -> (..., K) in their
        dtype."""
        q = _unpack(packed)  # (..., K)
        q = q.reshape(*q.shape[:-1], -1, self.group_size).to(sz.dtype)  # (..., K/G, G)
        return ((q - 8) * sz[..., 0:1] + sz[..., 1:2]).flatten(-2)

    def kernel_ready(self) -> bool:
        """Whether matmuls of this layer run PyTorch's int4 CPU kernel (it is on the CPU, the
        kernel accepts its shape and this build has it)."""
        return (
            self.kernel_fits()
            and self.scales_and_zeros.device.type == "cpu"
            and kernels.has_op(self.OP)
        )

    def kernel_fits(self) -> bool:
        """Whether PyTorch's int4 CPU kernel accepts this layer's shape and group size."""
        return (
            self.group_size in kernels.INT4_KERNEL_GROUPS
            and self.out_features % kernels.INT4_KERNEL_N_MULTIPLE == 0
        )

    def packed(self) -> Tensor:
        """The codes in the int4 kernel's layout, packed on first use (before ``torch.compile``
        traces the layer, :func:`attnlab.generate.drivers.prepare` calls it).

        The packed tensor then holds the only copy of the codes: ``weight_int4`` is dropped
        (the layer would otherwise keep its 4-bit weights twice) and rebuilt from the kernel's
        layout where it is asked for (the state dict, :meth:`dequantize`, :meth:`rows`)."""
        if self._packed is None:
            codes = self.codes().to(torch.int32)
            self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
            self._buffers["weight_int4"] = None
        return self._packed

    def _bytes(self, keep: bool = True) -> Tensor:
        """``weight_int4`` (N, K / 2): the buffer, or rebuilt from the kernel's layout (and kept
        as the buffer again unless ``keep`` is False)."""
        stored = self._buffers["weight_int4"]
        if stored is not None:
            return stored
        codes = _from_kernel_layout(self._packed, self.out_features, self.in_features)
        stored = _pack_pairs(codes)
        if keep:  # dequantizing again (a gradient through the layer) should not unpack again
            self._buffers["weight_int4"] = stored
        return stored

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._buffers["weight_int4"] is None:
            destination[prefix + "weight_int4"] = self._bytes(keep=False)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        if self._buffers["weight_int4"] is None:  # a buffer to load the codes into
            self._buffers["weight_int4"] = self._packed.new_empty(self._packed.shape)
        self._packed = None  # new codes: pack again
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._bytes()  # the codes back in their own layout, then moved or cast
        self._packed = None  # pack again from the codes
        return super()._apply(fn, recurse)

    def _matmul(self, x2d: Tensor) -> Tensor:
        if self.kernel_fits() and kernels.use_kernel(x2d, self.OP):
            x = kernels.kernel_input(x2d, self.OP)
            y = kernels.int4_matmul(
                x, self.packed(), self.group_size, self._scales_as("scales_and_zeros", x.dtype)
            )
            return y.to(x2d.dtype)
        return F.linear(x2d, self.dequantize(x2d.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


def _unpack(packed: Tensor) -> Tensor:
    """Bytes (..., K / 2) holding two codes each (even column in the low nibble) -> uint8
    codes (..., K)."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)


def _pack_pairs(codes: Tensor) -> Tensor:
    """uint8 codes (..., K) in 0..15 -> bytes (..., K / 2), even column in the low nibble."""
    pairs = codes.unflatten(-1, (-1, 2))
    return pairs[..., 0] | (pairs[..., 1] << 4)


def _from_kernel_layout(packed: Tensor, n: int, k: int) -> Tensor:
    """The codes (N, K) uint8 that ``_convert_weight_to_int4pack_for_cpu`` packed into
    ``packed``. That layout interleaves rows in blocks whose size follows the CPU's vector
    width (PyTorch's int4mm_kernel.cpp), so it is found rather than assumed: packing probes
    whose codes are the 4-bit digits of each element's flat index tells, digit by digit, which
    element every nibble holds."""
    total = n * k
    flat = torch.arange(total, dtype=torch.int64).view(n, k)
    where = torch.zeros(2, packed.numel(), dtype=torch.int64)  # low, high nibble -> flat index
    for shift in range(0, max(total - 1, 1).bit_length(), 4):
        probe = ((flat >> shift) & 0xF).to(torch.int32)
        digits = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1).reshape(-1)
        where[0] |= (digits & 0xF).long() << shift
        where[1] |= (digits >> 4).long() << shift
    out = torch.empty(total, dtype=torch.uint8)
    flat_packed = packed.reshape(-1)
    out[where[0]] = flat_packed & 0xF
    out[where[1]] = flat_packed >> 4
    return out.view(n, k)

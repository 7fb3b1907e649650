"""MAX Graph counterparts of openai-whisper's layers, named after the modules they mirror.

Each layer declares its weights as MAX ``Weight``s under openai-whisper's own state-dict names
(``blocks.0.attn.query.weight`` ...), so one compiled graph serves every checkpoint of the same
shape: the values are bound at load time through the weights registry (see ``weights.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from weakref import WeakKeyDictionary

from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorValue, Weight, ops
from max.graph.quantization import QuantizationEncoding

from harness.max_whisper import quantized
from harness.max_whisper.host_arrays import HostArray
from harness.max_whisper.quantized import FLOAT32, WeightsMode
from harness.max_whisper.variant import Variant

# The weights each graph declared, by name. MAX keeps its own table only as a private attribute
# (``Graph._weights``), so the layers record what they declare here instead.
_DECLARED: WeakKeyDictionary[Graph, dict[str, Weight]] = WeakKeyDictionary()


@dataclass(frozen=True)
class Declared:
    """A weight as a graph declares it: what the tensor bound to it must be.

    Plain values, so the engine's store can keep them beside a compiled graph (``to_json``) and
    a later process binds weights without building the graph again.
    """

    shape: tuple[int, ...]
    dtype: str  # a DType name
    encoding: str | None = None  # a quantisation encoding: bytes in the encoding's own shape

    def to_json(self) -> list:
        return [list(self.shape), self.dtype, self.encoding]

    @classmethod
    def from_json(cls, value: list) -> Declared:
        shape, dtype, encoding = value
        return cls(tuple(shape), dtype, encoding)


def declared_weights(graph: Graph) -> dict[str, Declared]:
    """The weights declared while ``graph`` was being built (not its subgraphs'), by name."""
    return {
        name: Declared(
            tuple(int(d) for d in weight.shape),
            weight.dtype.name,
            None if weight.quantization_encoding is None else weight.quantization_encoding.name,
        )
        for name, weight in _DECLARED.get(graph, {}).items()
    }


def declare_call(subgraph: Graph, prefix: str) -> None:
    """Record as the current graph's the weights that a call of ``subgraph`` with ``prefix``
    reads (``ops.call`` puts the prefix before its weights' names): what binding must give."""
    declared = _DECLARED.setdefault(Graph.current, {})
    for name, weight in _DECLARED.get(subgraph, {}).items():
        declared.setdefault(prefix + name, weight)


def check_bound(
    declared: Mapping[str, Declared], weights: Mapping[str, HostArray], graph_name: str
) -> None:
    """Refuse a weight whose shape or dtype is not what graph ``graph_name`` declared, naming it.

    MAX 26.7 binds any tensor under a declared name unchecked (a smaller one is read past its
    end), so a layout slip would otherwise surface only as wrong numbers. Quantised weights are
    encoded bytes whose shape is the encoding's, and are left to ``quantized.layout``.
    """
    for name, weight in declared.items():
        if weight.encoding is not None:
            continue
        tensor = weights[name]
        got = f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
        if tuple(tensor.shape) != weight.shape or got.split()[-1] != weight.dtype:
            raise ValueError(
                f"weight {name!r} is {got}; {graph_name} declares {weight.shape} {weight.dtype}"
            )


@dataclass(frozen=True)
class Scope:
    """Where a layer's weights live: a state-dict prefix, their dtype and device.

    ``variant`` carries build-time switches (the fault catalogue); the default is the faithful
    model.
    """

    prefix: str
    dtype: DType
    device: DeviceRef
    variant: Variant = Variant()
    placeholder: bool = False  # inside a subgraph: names get the caller's prefix (ops.call)
    few_rows: bool = False  # decoding: linear weights as stored, (out, in), see ``linear``
    weights_mode: WeightsMode = FLOAT32  # decoding: how the matrices are stored (quantized.py)
    namespace: str = ""  # before every weight's name in MAX: ``<kind>/`` (engine.GraphSpec)

    @classmethod
    def of(cls, kind: str, dtype: DType, device: DeviceRef, variant: Variant) -> Scope:
        """The root scope of a graph of ``kind``: its weights under ``<kind>/``, which keeps
        them apart from the other graphs of its MAX module, and is the same in every variant,
        so that a fault's unchanged graphs are the faithful ones (``Engine.compile_together``)."""
        return cls("", dtype, device, variant, namespace=f"{kind}/")

    def __truediv__(self, name: str | int) -> Scope:
        return replace(self, prefix=f"{self.prefix}.{name}" if self.prefix else str(name))

    def weight(
        self,
        name: str,
        shape: list[int],
        dtype: DType | None = None,
        encoding: QuantizationEncoding | None = None,
    ) -> Weight:
        """The weight ``name`` of this scope, declared once per graph however often it is read
        (the ``key_bias`` fault reads the value's bias twice; MAX rejects a second declaration).
        ``dtype`` defaults to the scope's; ``encoding`` marks a quantised one (quantized.py)."""
        full = f"{self.prefix}.{name}" if self.prefix else name
        declared = _DECLARED.setdefault(Graph.current, {})
        if full not in declared:
            declared[full] = Weight(
                self.namespace + full,
                dtype or self.dtype,
                shape,
                self.device,
                quantization_encoding=encoding,
                # A subgraph's weight names get the caller's prefix (``ops.call``). MAX's public
                # route to this flag is ``max.nn.Module.build_subgraph``, which sets the same
                # private field; our layers are functions, not Modules, so they set it directly.
                _placeholder=self.placeholder,
            )
        return declared[full]


def linear(scope: Scope, x: TensorValue, n_in: int, n_out: int, bias: bool = True) -> TensorValue:
    """``nn.Linear``: ``x @ weight`` on the weight stored pre-transposed as (n_in, n_out).

    In a ``few_rows`` scope (a decoding step: one row per beam) it is ``(weight @ xᵀ)ᵀ`` on the
    weight as PyTorch stores it, (n_out, n_in): MAX runs that matrix-vector product about 2.5x
    faster on this CPU, and at one row the transposes cost nothing. ``weights.py`` lays the
    weights out accordingly. A ``few_rows`` scope whose ``weights_mode`` quantises the linear
    layers reads the weight in that encoding instead (``quantized.project``).
    """
    if scope.few_rows:
        rows = ops.reshape(x, [-1, n_in])
        if scope.weights_mode.quantizes_linear:
            y = quantized.project(
                scope.weight, rows, "weight", n_out, scope.weights_mode.linear_encoding
            )
        else:
            w = scope.weight("weight", [n_out, n_in])
            y = ops.permute(w @ ops.permute(rows, [1, 0]), [1, 0])
        y = ops.reshape(y, [*x.shape[:-1], n_out])
    else:
        y = x @ scope.weight("weight", [n_in, n_out])
    return y + scope.weight("bias", [n_out]) if bias else y


def layer_norm(scope: Scope, x: TensorValue, n_state: int) -> TensorValue:
    return ops.layer_norm(
        x,
        scope.weight("weight", [n_state]),
        scope.weight("bias", [n_state]),
        epsilon=scope.variant.layer_norm_eps,
    )


def gelu(scope: Scope, x: TensorValue) -> TensorValue:
    return ops.gelu(x, approximate=scope.variant.gelu_approximate)


def split_heads(scope: Scope, x: TensorValue, n_head: int) -> TensorValue:
    """(batch, ctx, state) -> (batch, head, ctx, head_dim)."""
    batch, ctx, state = x.shape
    head_dim = int(state) // n_head
    if not scope.variant.heads_transposed:  # planted fault: reinterpret memory, no transpose
        return ops.reshape(x, [batch, n_head, ctx, head_dim])
    x = ops.reshape(x, [batch, ctx, n_head, head_dim])  # (batch, ctx, head, head_dim)
    return ops.permute(x, [0, 2, 1, 3])


def merge_heads(x: TensorValue) -> TensorValue:
    """(batch, head, ctx, head_dim) -> (batch, ctx, state)."""
    batch, n_head, ctx, head_dim = x.shape
    x = ops.permute(x, [0, 2, 1, 3])
    return ops.reshape(x, [batch, ctx, int(n_head) * int(head_dim)])


def attention(
    scope: Scope, q: TensorValue, k: TensorValue, v: TensorValue, mask: TensorValue | None
) -> TensorValue:
    """softmax(q kᵀ / √d + mask) v over (batch, head, ctx, head_dim) tensors, in float32.

    In a bfloat16 model too the attention core runs in float32, the projections around it in
    bfloat16: scores q kᵀ rounded to bfloat16 (what a bfloat16 matmul returns) put synthetic:tiny's
    attention sub-stage at rel_l2 0.3, even with softmax in float32, where PyTorch's bfloat16
    attention (SDPA, float32 inside) is at 3e-3; in float32 MAX is at 4e-3 (see README).
    The output is in ``q``'s dtype, the model's: a decoding step's cross K/V may be stored in
    float16 (``WeightsMode.cross_kv_dtype``), and the projection after it must not see that.
    """
    dtype = q.dtype
    q, k, v = float32(q), float32(k), float32(v)
    return cast(attention_float32(scope, q, k, v, mask), dtype)


def attention_float32(
    scope: Scope, q: TensorValue, k: TensorValue, v: TensorValue, mask: TensorValue | None
) -> TensorValue:
    """Unmasked, the product is written as ``softmax(scores * scale) @ v``, the exact operand
    order in which MAX's compiler recognises fused attention. Masked, softmax is spelled out:
    MAX 26.7 fuses a mask built in the graph into ``ops.softmax``'s input and returns the
    unmasked softmax (with or without the product by v; an input mask, or one with a second
    user, is kept: ``test_layers.py``), which this harness caught as decoder drift.
    """
    scale = scope.variant.attention_scale(int(q.shape[-1]))
    axis = -2 if scope.variant.softmax_over_queries else -1
    scores = q @ ops.permute(k, [0, 1, 3, 2])
    if mask is None and scope.variant.softmax_over_queries:
        # planted fault, spelled with transposes: MAX 26.7 fails to compile softmax(axis=-2)
        transposed = ops.softmax(ops.permute(scores * scale, [0, 1, 3, 2]))
        return ops.permute(transposed, [0, 1, 3, 2]) @ v
    if mask is None:
        return ops.softmax(scores * scale) @ v
    if scope.variant.fused_masked_attention:  # MAX 26.7 drops the mask (faults.catalogue)
        return ops.softmax((scores + mask) * scale) @ v
    scores = (scores + mask) * scale
    weights = ops.exp(scores - ops.max(scores, axis=axis))
    return (weights / ops.sum(weights, axis=axis)) @ v


def float32(x: TensorValue) -> TensorValue:
    return cast(x, DType.float32)


def cast(x: TensorValue, dtype: DType) -> TensorValue:
    """``ops.cast`` only where the dtype changes: a float32 graph stays as it was."""
    return x if x.dtype == dtype else ops.cast(x, dtype)


def project_qkv(scope: Scope, x: TensorValue, n_head: int) -> tuple[TensorValue, ...]:
    """The query, key and value of ``x``, each split into (batch, head, ctx, head_dim)."""
    n_state = int(x.shape[-1])
    q = split_heads(scope, linear(scope / "query", x, n_state, n_state), n_head)
    k = split_heads(scope, key_projection(scope, x, n_state), n_head)
    v = split_heads(scope, linear(scope / "value", x, n_state, n_state), n_head)
    return q, k, v


def key_projection(scope: Scope, x: TensorValue, n_state: int) -> TensorValue:
    """whisper's key projection has no bias; the ``key_bias`` fault borrows the value's."""
    k = linear(scope / "key", x, n_state, n_state, bias=False)
    if scope.variant.key_bias:
        k = k + (scope / "value").weight("bias", [n_state])
    return k


def mlp(scope: Scope, x: TensorValue, n_state: int) -> TensorValue:
    """Linear(state, 4·state) -> GELU -> Linear(4·state, state); whisper names them mlp.0, mlp.2."""
    h = gelu(scope, linear(scope / 0, x, n_state, 4 * n_state))
    return linear(scope / 2, h, 4 * n_state, n_state)

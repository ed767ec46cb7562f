"""The mixture-of-experts families lna counts per expert (docs/moe.md), and what their layers hold.

A MoE layer's MLP is a block with a router (`gate`) and an `experts` module that
transformers 5 calls as experts(hidden [T, H], top_k_index [T, k], top_k_weights [T, k]),
with every expert's weights in 3D parameters: gate_up_proj [E, 2I, H] (gate rows first)
and down_proj [E, H, I]; expert e computes down_e(act(gate_e(x)) * up_e(x)), scaled by the
token's routing weight. Some blocks add an always-on shared expert (a plain gated MLP), and
some models keep plain dense MLPs in some layers (DeepSeek's first_k_dense_replace, Qwen's
mlp_only_layers). lna replaces the `experts` module (whatever experts_implementation
transformers would run: eager loop, batched_mm or grouped_mm) by one that computes the same
function on the pairs sorted by expert and counts (lna.runners.moe); the router, the
routing weights and everything else stay transformers' own. Counted per layer:
    routed experts  counts [expert, language, neuron] and routed tokens [expert, language];
    always-on MLP   the shared expert, or the layer's dense MLP: counts [language, neuron]
                    like a dense model's (every token passes through it).
Each family is listed by name and tested against the unmodified model (tests/test_moe.py);
every load probes each experts module against its own forward.
"""
from dataclasses import dataclass

from lna.core.errors import LnaError
from lna.models.families import Family

# Families whose experts compute something other than act(gate) * up: (model_type, why).
REFUSED = {
    "gpt_oss": "its experts compute (clamp(up) + 1) * glu(clamp(gate)) with biases and an interleaved "
               "gate/up layout, not act(gate) * up",
}


# Why lna does not count experts inside vLLM (docs/moe.md), one line.
VLLM_REFUSAL = ("lna counts mixture-of-experts models with transformers only: vLLM's fused-MoE layers run their "
                "activation inside its own MoE kernels (Triton, CUTLASS, DeepGEMM, per backend and quantisation), "
                "not through the MLP op lna replaces, and no counting hook there was built and tested (vllm is not "
                "installed where this lna was developed)")


@dataclass(frozen=True)
class MoEFamily(Family):
    shared: str | None = None  # the block's attribute holding an always-on shared expert MLP
    vllm: bool = False  # lna counts experts with transformers only (docs/moe.md)


MOE_FAMILIES = (
    MoEFamily("Mixtral", ("mixtral",)),
    MoEFamily("Qwen2-MoE (shared expert)", ("qwen2_moe",), shared="shared_expert"),
    MoEFamily("Qwen3-MoE", ("qwen3_moe",)),
    MoEFamily("OLMoE", ("olmoe",)),
    MoEFamily("DeepSeek-V2 (shared experts, dense first layers)", ("deepseek_v2",), shared="shared_experts"),
    MoEFamily("DeepSeek-V3 (shared experts, dense first layers)", ("deepseek_v3",), shared="shared_experts"),
)
EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts")  # config keys: routed experts per layer
BY_TYPE = {t: f for f in MOE_FAMILIES for t in f.model_types}


def supported() -> str:
    return "mixture-of-experts decoders: " + ", ".join(f.name.split(" (")[0] for f in MOE_FAMILIES)


def is_moe(cfg: dict) -> bool:
    """Does this config.json (a dict) describe a mixture-of-experts model?"""
    from lna.models.families import EXPERT_KEYS, text_config

    text = text_config(cfg)
    return bool([k for k in EXPERT_KEYS if text.get(k)]) or "moe" in str(cfg.get("model_type", "")).lower()


def identify(cfg: dict, name: str) -> MoEFamily:
    """The MoE family of a config.json, or one line saying why it is not counted."""
    model_type = cfg.get("model_type", "?")
    arch = (cfg.get("architectures") or [model_type])[0]
    if model_type in REFUSED:
        raise LnaError(f"{name}: {arch}: {REFUSED[model_type]}, so lna cannot count its expert neurons; "
                       f"lna supports {supported()}")
    family = BY_TYPE.get(model_type)
    if family is None:
        raise LnaError(f"{name}: {arch} (model_type {model_type!r}) is a mixture-of-experts model lna does not "
                       f"count; lna supports {supported()}")
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise LnaError(f"{name}: {arch} with activation {act!r} is not supported (lna counts SiLU-gated experts)")
    if not isinstance(cfg.get("num_hidden_layers"), int) or not any(isinstance(cfg.get(k), int) for k in EXPERTS):
        raise LnaError(f"{name}: config.json lacks an integer num_hidden_layers or number of experts "
                       f"({', '.join(EXPERTS)}); lna supports {supported()}")
    return family


@dataclass(frozen=True)
class Layout:
    """What the loaded model's layers hold: routed experts and always-on MLP widths per layer."""
    experts: int  # routed experts per MoE layer
    expert_neurons: int  # neurons of each routed expert
    top_k: int  # experts per token
    moe_layers: tuple  # layers with routed experts
    always_on: tuple  # per layer: neurons of its shared expert or dense MLP (0: none)

    @property
    def neurons(self) -> int:
        """Width of the store's always-on table (the widest; narrower layers are padded)."""
        return max(self.always_on)

    def meta(self) -> dict:
        """What a count store records of it (lna.storage.store)."""
        return {"top_k": self.top_k, "moe_layers": list(self.moe_layers), "always_on": list(self.always_on)}


def parts(layer, family: MoEFamily):
    """(experts module or None, always-on MLP or None, the attribute path of that MLP)."""
    mlp = layer.mlp
    experts = getattr(mlp, "experts", None)
    if experts is None:
        return None, mlp, "mlp"
    shared = getattr(mlp, family.shared, None) if family.shared else None
    return experts, shared, family.shared


def layout(decoder, family: MoEFamily, name: str, top_k: int) -> Layout:
    """The Layout of a loaded decoder, checked: experts in transformers 5's 3D layout and
    plain gated always-on MLPs (a variant would be counted wrongly)."""
    import torch

    moe, widths, shapes = [], [], set()
    for i, layer in enumerate(decoder.layers):
        experts, dense, _ = parts(layer, family)
        if experts is not None:
            gu, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
            if not (isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.dim() == 3
                    and not getattr(experts, "is_transposed", False) and getattr(experts, "is_concatenated", True)
                    and getattr(experts, "has_gate", True) and not getattr(experts, "has_bias", False)
                    and down.shape[0] == gu.shape[0] and down.shape[2] * 2 == gu.shape[1]):
                raise LnaError(f"{name}: the experts of layer {i} ({type(experts).__name__}) are not in the "
                               "[E, 2I, H] gate_up_proj / [E, H, I] down_proj layout lna counts; not supported")
            moe.append(i)
            shapes.add((gu.shape[0], down.shape[2]))
        if dense is not None and not all(isinstance(getattr(dense, p, None), torch.nn.Linear)
                                         for p in ("gate_proj", "up_proj", "down_proj")):
            raise LnaError(f"{name}: layer {i} has an MLP without gate_proj/up_proj/down_proj "
                           f"({type(dense).__name__}); not supported")
        widths.append(dense.gate_proj.out_features if dense is not None else 0)
    if not moe:
        raise LnaError(f"{name}: no layer has routed experts; profile it as a dense model")
    if len(shapes) > 1:
        raise LnaError(f"{name}: its MoE layers differ in experts x neurons {sorted(shapes)}; not supported")
    (experts, width), = shapes
    return Layout(experts, width, top_k, tuple(moe), tuple(widths))

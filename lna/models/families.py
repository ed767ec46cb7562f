"""The model families lna profiles: which decoders, where their MLPs are, what they compute.

lna counts neuron j of layer i as active on a token when the gate pre-activation
gate_j(x) > 0. That is the study's rule SiLU(gate) > 0 for SiLU-gated MLPs,
down(SiLU(gate(x)) * up(x)), and the same rule for GELU-tanh gated ones (Gemma),
down(GELU_tanh(gate(x)) * up(x)), since GELU(x) > 0 exactly when x > 0. Families are
listed by name rather than accepted by shape: an MLP that looks gated but computes
something else (a clamp, a soft cap, a sparsity threshold) would be counted wrongly in
silence, so each family here is tested against an unmodified transformers model
(tests/test_families.py), and every load checks the MLP of each layer against the formula
on a probe input.

Everything a family does outside its MLPs (Gemma's embedding scaling and extra norms,
Granite's multipliers, q/k norms, attention biases, rope scaling, sliding windows) stays
inside transformers' (or vLLM's) own model code, untouched.
"""
from dataclasses import dataclass

from lna.core.errors import LnaError

ACTIVATIONS = {  # config value -> lna.kernels activation
    "silu": "silu", "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
}
# Keys of a config.json that give a model experts (mixture of experts).
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")


@dataclass(frozen=True)
class Family:
    name: str  # as in the README's table
    model_types: tuple  # config.json "model_type" values
    activation: str = "silu"  # lna.kernels activation: "silu" | "gelu_tanh"
    act_key: str = "hidden_act"  # the config key the MLP's activation is read from
    packed: bool = False  # gate and up in one gate_up_proj [2I, H] (gate first), as Phi-3
    # What the causal LM does to lm_head's output, as (operation, config attribute):
    # ("softcap", a): a * tanh(l / a); ("div", a): l / a; ("mul", a): l * a.
    logits: tuple | None = None
    vllm: bool = True  # vLLM 0.32 runs it (tests/test_families.py proves it where it does)


FAMILIES = (
    Family("Llama (Llama 2, Llama 3.x with rope scaling)", ("llama",)),
    Family("Mistral (sliding window)", ("mistral",)),
    Family("Ministral (interleaved sliding window)", ("ministral", "ministral3")),
    Family("Qwen2 / Qwen2.5 (attention biases)", ("qwen2",)),
    Family("Qwen3 (q/k norms)", ("qwen3",)),
    Family("OLMo, OLMo 2, OLMo 3", ("olmo", "olmo2", "olmo3")),
    Family("Granite (multipliers)", ("granite",), logits=("div", "logits_scaling")),
    Family("Command R (Cohere)", ("cohere",), logits=("mul", "logit_scale")),
    # vLLM's Cohere2 sliding window covers one token more than transformers' (its comment:
    # Cohere's training convention); the two backends would count differently.
    Family("Command R7B (Cohere2)", ("cohere2",), logits=("mul", "logit_scale"), vllm=False),
    Family("Phi-3 (packed gate_up_proj)", ("phi3",), packed=True),
    Family("GLM-4 (packed gate_up_proj)", ("glm4",), packed=True),
    # vLLM runs GLM through its Transformers backend, which leaves this packed MLP unfused.
    Family("GLM (packed gate_up_proj)", ("glm",), packed=True, vllm=False),
    Family("Gemma", ("gemma",), activation="gelu_tanh"),
    Family("Gemma 2", ("gemma2",), activation="gelu_tanh", act_key="hidden_activation",
           logits=("softcap", "final_logit_softcapping")),
    Family("Gemma 3 (text)", ("gemma3_text",), activation="gelu_tanh", act_key="hidden_activation",
           logits=("softcap", "final_logit_softcapping")),
    Family("Gemma 3 multimodal checkpoints (their language model)", ("gemma3",), activation="gelu_tanh",
           act_key="hidden_activation", logits=("softcap", "final_logit_softcapping"), vllm=False),
    Family("VaultGemma", ("vaultgemma",), activation="gelu_tanh", act_key="hidden_activation",
           logits=("softcap", "final_logit_softcapping")),
    Family("SmolLM3", ("smollm3",)),
    Family("StableLM", ("stablelm",)),
    Family("Helium", ("helium",)),
    Family("EXAONE 4", ("exaone4",)),
    Family("Seed-OSS", ("seed_oss",)),
    Family("Hunyuan dense", ("hunyuan_v1_dense",)),
    Family("ERNIE 4.5", ("ernie4_5",)),
    Family("MiniCPM3", ("minicpm3",), logits=("div", "logits_scaling")),
    Family("HyperCLOVA X", ("hyperclovax",), logits=("mul", "logits_scaling")),
    # vLLM's Transformers backend cannot run its differential attention.
    Family("DiffLlama", ("diffllama",), vllm=False),
    Family("CWM", ("cwm",)),
)
BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def supported() -> str:
    """The supported families, for error messages."""
    return ("dense gated-MLP decoders: " + ", ".join(f.name.split(" (")[0] for f in FAMILIES)
            + " (mixture-of-experts models: lna-profile and lna experts count them per expert, docs/moe.md)")


def text_config(cfg: dict) -> dict:
    """The language model's part of a config.json (multimodal checkpoints nest it)."""
    text = cfg.get("text_config")
    return text if isinstance(text, dict) and cfg.get("model_type") in BY_TYPE else cfg


def identify(cfg: dict, name: str) -> Family:
    """The family of a config.json (a dict), or a one-line refusal naming what is supported."""
    model_type = cfg.get("model_type", "?")
    arch = (cfg.get("architectures") or [model_type])[0]
    text = text_config(cfg)
    experts = [k for k in EXPERT_KEYS if text.get(k)]
    if experts or "moe" in str(model_type).lower():
        raise LnaError(f"{name}: {arch} is a mixture-of-experts model; this takes dense MLP neurons only "
                       f"(lna-profile and lna experts count MoE models per expert; ablation and steering of experts "
                       f"are not in the commands yet: docs/moe.md). Supported: {supported()}")
    family = BY_TYPE.get(model_type)
    if family is None:
        raise LnaError(f"{name}: {arch} (model_type {model_type!r}) is not supported; lna supports {supported()}")
    act = text.get(family.act_key)
    if family.activation == "gelu_tanh" and act in (None, "gelu"):
        act = "gelu_pytorch_tanh"  # transformers' default, and its reading of Gemma's legacy "gelu"
    if act is None:
        act = "silu"
    if ACTIVATIONS.get(act) != family.activation:
        raise LnaError(f"{name}: {arch} with activation {act!r} is not supported (lna counts "
                       f"{family.activation} gated MLPs of {family.name.split(' (')[0]}); lna supports {supported()}")
    for key in ("num_hidden_layers", "intermediate_size"):
        if not isinstance(text.get(key), int):
            raise LnaError(f"{name}: config.json has no integer {key!r}; lna supports {supported()}")
    return family


# -- the loaded transformers model ------------------------------------------------------------

def hf_text_config(net):
    return net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config


def decoder(net):
    """The decoder stack of a causal LM (`.layers`, last hidden state after the final norm);
    multimodal wrappers hold it as `model.language_model`."""
    inner = net.model
    lm = getattr(inner, "language_model", None)
    return lm if lm is not None and hasattr(lm, "layers") else inner


def attn_implementation(config) -> str:
    """sdpa (lna passes 4D masks), except for attention logit soft-capping (Gemma 2), which
    transformers computes in eager attention only. `config`: a transformers config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return "eager" if getattr(text, "attn_logit_softcapping", None) is not None else "sdpa"


def gate_up(mlp, family: Family, x):
    """(gate, up) of `x` through `mlp`; for packed MLPs, views into one [T, 2I] output."""
    if family.packed:
        gu = mlp.gate_up_proj(x)
        half = gu.shape[-1] // 2
        return gu[..., :half], gu[..., half:]
    return mlp.gate_proj(x), mlp.up_proj(x)


def kernel_kwargs(family: Family) -> dict:
    """lna.kernels' keyword for the family's activation ({} for SiLU, the default)."""
    return {} if family.activation == "silu" else {"activation": family.activation}


def reference_act(family: Family):
    import torch.nn.functional as F

    if family.activation == "gelu_tanh":
        return lambda g: F.gelu(g, approximate="tanh")
    return F.silu


def check(net, family: Family, name: str) -> None:
    """Every layer's MLP computes down(act(gate(x)) * up(x)) for the family's act: checked on
    a probe input against the module's own forward (a variant would be counted wrongly)."""
    import torch

    parts = ("gate_up_proj", "down_proj") if family.packed else ("gate_proj", "up_proj", "down_proj")
    layers = decoder(net).layers
    act = reference_act(family)
    probed = set()
    for i, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is None or not all(isinstance(getattr(mlp, p, None), torch.nn.Linear) for p in parts):
            raise LnaError(f"{name}: layer {i} has no {'/'.join(parts)} MLP; lna supports {supported()}")
        if type(mlp) in probed:
            continue
        probed.add(type(mlp))
        w = getattr(mlp, parts[0]).weight
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(3, w.shape[1], generator=gen).to(w.device, w.dtype)
        with torch.no_grad():
            got = mlp(x)
            gate, up = gate_up(mlp, family, x)
            want = mlp.down_proj(act(gate) * up)
        err = (got.float() - want.float()).abs().max().item()
        if not err <= 1e-2 * want.float().abs().max().item() + 1e-6:
            raise LnaError(f"{name}: the MLP of layer {i} ({type(mlp).__name__}) does not compute "
                           f"down({family.activation}(gate) * up) (max difference {err:.3g}); not supported")


def logits(net, family: Family, hidden):
    """lm_head(hidden) with the family's own post-processing, in float32."""
    import torch

    out = net.get_output_embeddings()(hidden).float()
    if family.logits is None:
        return out
    op, key = family.logits
    value = getattr(hf_text_config(net), key, None)
    if value is None:
        return out
    if op == "softcap":
        return torch.tanh(out / value) * value
    return out / value if op == "div" else out * value

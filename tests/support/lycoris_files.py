"""LoRA files in every format users download (kohya LoRA/LoCon, LyCORIS LoHa, LoKr, DoRA, OFT,
BOFT, (IA)^3, full difference, norms, diffusers/PEFT), written for a tiny pipeline with the real
key layouts, and the weights each must give, merged by hand with the formats' own definitions.

The hand merges are written independently of engine/networks/lora_formats.py: Tucker products
kernel position by kernel position, Kronecker products as explicit block layouts, OFT through
block-diagonal matrices and a linear solve, BOFT through explicit permutation lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tests.support.ldm_export import unet_to_ldm

RANK = 2


@dataclass
class Target:
    component: str   # unet, text_encoder, text_encoder_2
    name: str        # the module's name in the component
    module: torch.nn.Module


def targets(pipe, kind: str) -> list[Target]:
    """The layers a test file of `kind` changes: attention and feed-forward linears, a 3x3 conv
    and a 1x1 one in the UNet, the first layer's projections in each text encoder; norm layers
    for `norm`; layers with a bias for `full`."""
    chosen: list[Target] = []
    parts = [("unet", pipe.unet), ("text_encoder", pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        parts.append(("text_encoder_2", pipe.text_encoder_2))
    for component, model in parts:
        named = dict(model.named_modules())
        if kind == "norm":
            wanted = [n for n, m in named.items() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))][:2]
        elif kind.endswith("_tucker"):  # Tucker forms are for conv kernels
            wanted = [n for n, m in named.items() if n.endswith("conv1") and isinstance(m, torch.nn.Conv2d)][:1]
        elif component == "unet":
            attention = next(n for n in named if n.endswith("attn1.to_q"))[:-len(".to_q")]
            block = attention.rsplit(".attn1", 1)[0]
            conv3 = next(n for n, m in named.items() if n.endswith("conv1") and isinstance(m, torch.nn.Conv2d))
            conv1 = next(n for n, m in named.items() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1))
            wanted = [f"{attention}.to_q", f"{attention}.to_k", f"{block}.ff.net.2", conv3, conv1]
        else:
            layer = next(n for n in named if n.endswith("layers.0.self_attn.q_proj"))[:-len(".self_attn.q_proj")]
            wanted = [f"{layer}.self_attn.q_proj", f"{layer}.mlp.fc1"]
        chosen += [Target(component, name, named[name]) for name in wanted]
    return chosen


def kohya_key(pipe, target: Target, ldm: bool = False) -> str:
    """`lora_unet_...` with diffusers' module names, or (ldm=True, as SDXL files are) the LDM
    UNet's; `lora_te_` / `lora_te1_` / `lora_te2_` with the `text_model` level files keep."""
    if target.component == "unet":
        name = ldm_module_names(pipe.unet)[target.name] if ldm else target.name
        return "lora_unet_" + name.replace(".", "_")
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    prefix = {"text_encoder": "lora_te1" if sdxl else "lora_te", "text_encoder_2": "lora_te2"}[target.component]
    return f"{prefix}_{_text_model_name(target.name).replace('.', '_')}"


def _text_model_name(name: str) -> str:
    """The module's name with the `text_model` level files keep (transformers 5 dropped it in CLIPTextModel)."""
    return name if name.startswith("text_model.") else f"text_model.{name}"


def ldm_module_names(unet) -> dict[str, str]:
    """diffusers module name -> LDM module name, from the LDM export the tests load checkpoints by."""
    by_tensor = {tensor.data_ptr(): key for key, tensor in unet_to_ldm(unet).items()}
    names = {}
    for key, tensor in unet.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if leaf == "weight":
            names[module] = by_tensor[tensor.data_ptr()].rpartition(".")[0]
    return names


def _rand(generator, *shape, scale=0.3):
    return torch.randn(*shape, generator=generator) * scale


def factors(kind: str, weight: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A layer's tensors in `kind`'s layout, for a layer with this weight."""
    out, inp = weight.shape[0], weight.shape[1] if weight.dim() > 1 else 1
    kernel = tuple(weight.shape[2:])
    k = int(torch.tensor(kernel).prod()) if kernel else 1
    r = RANK
    alpha = torch.tensor(1.0)  # alpha / rank = 0.5, so a merge ignoring it is told apart
    if kind in ("lora", "dora"):
        f = {"lora_down.weight": _rand(generator, r, inp, *kernel), "lora_up.weight": _rand(generator, out, r, *[1] * len(kernel)),
             "alpha": alpha}
        if kind == "dora":  # the magnitude per input channel, as A1111 and LyCORIS store it
            f["dora_scale"] = weight.transpose(0, 1).reshape(inp, -1).norm(dim=1).reshape(1, inp, *[1] * len(kernel)) * 1.3
        return f
    if kind == "locon_tucker":
        return {"lora_down.weight": _rand(generator, r, inp, 1, 1), "lora_mid.weight": _rand(generator, r, r, *kernel),
                "lora_up.weight": _rand(generator, out, r, 1, 1), "alpha": alpha}
    if kind == "loha":
        return {"hada_w1_a": _rand(generator, out, r), "hada_w1_b": _rand(generator, r, inp * k),
                "hada_w2_a": _rand(generator, out, r), "hada_w2_b": _rand(generator, r, inp * k), "alpha": alpha}
    if kind == "loha_tucker":
        return {"hada_w1_a": _rand(generator, r, out), "hada_w1_b": _rand(generator, r, inp), "hada_t1": _rand(generator, r, r, *kernel),
                "hada_w2_a": _rand(generator, r, out), "hada_w2_b": _rand(generator, r, inp), "hada_t2": _rand(generator, r, r, *kernel),
                "alpha": alpha}
    if kind in ("lokr", "lokr_full"):
        a, b = 2, 2  # w1 spreads w2 over 2 x 2 blocks of channels
        f = {"lokr_w1": _rand(generator, a, b), "alpha": alpha}
        if kind == "lokr_full":  # no decomposed factor: alpha does not apply
            f["lokr_w2"] = _rand(generator, out // a, inp // b, *kernel)
        else:
            f["lokr_w2_a"] = _rand(generator, out // a, r)
            f["lokr_w2_b"] = _rand(generator, r, inp // b * k)
        return f
    if kind == "oft_kohya":
        blocks = 2
        return {"oft_blocks": _rand(generator, blocks, out // blocks, out // blocks, scale=0.05), "alpha": torch.tensor(0.01)}
    if kind == "oft_diag":
        blocks = 2
        size = out // blocks
        return {"oft_diag": torch.eye(size).repeat(blocks, 1, 1) + _rand(generator, blocks, size, size, scale=0.05)}
    if kind == "boft":
        stages, size = 2, 2
        return {"oft_diag": torch.eye(size).repeat(stages, out // size, 1, 1) + _rand(generator, stages, out // size, size, size, scale=0.2)}
    if kind == "ia3":
        return {"weight": _rand(generator, out), "on_input": torch.tensor(False)}
    if kind == "ia3_input":
        return {"weight": _rand(generator, inp), "on_input": torch.tensor(True)}
    if kind == "full":
        return {"diff": _rand(generator, *weight.shape, scale=0.05), "diff_b": _rand(generator, out, scale=0.05)}
    if kind == "norm":
        return {"w_norm": _rand(generator, out, scale=0.05), "b_norm": _rand(generator, out, scale=0.05)}
    raise ValueError(kind)


def write_state(pipe, kind: str, seed: int = 0, naming: str = "kohya") -> tuple[dict, dict]:
    """(the file's tensors, {target: factors}) for `kind`, keys named as `naming` says: kohya
    (diffusers module names), kohya_ldm (SDXL's LDM UNet names), peft (`unet.<module>.lora_A
    .weight`, no alpha) or diffusers_old (`<module>.lora.down.weight`)."""
    generator = torch.Generator().manual_seed(seed)
    state, per_layer = {}, {}
    for target in targets(pipe, "norm" if kind == "norm" else kind):
        f = factors(kind, target.module.weight, generator)
        if getattr(target.module, "bias", None) is None:
            f.pop("diff_b", None)
        per_layer[(target.component, target.name)] = f
        if naming in ("peft", "diffusers_old"):
            f.pop("alpha", None)
            component = target.component
            name = target.name if component == "unet" else _text_model_name(target.name)
            down, up = ("lora_A.weight", "lora_B.weight") if naming == "peft" else ("lora.down.weight", "lora.up.weight")
            state[f"{component}.{name}.{down}"] = f["lora_down.weight"]
            state[f"{component}.{name}.{up}"] = f["lora_up.weight"]
            continue
        key = kohya_key(pipe, target, ldm=naming == "kohya_ldm")
        for suffix, tensor in f.items():
            state[f"{key}.{suffix}"] = tensor.contiguous()
    return state, per_layer


def expected_weight(kind: str, weight: torch.Tensor, f: dict, strength: float) -> torch.Tensor:
    """The layer's weight after the merge, by the format's definition."""
    w = weight.detach().double()
    f = {name: t.double() for name, t in f.items()}
    out = w.shape[0]
    if kind in ("lora", "dora", "locon_tucker"):
        up = f["lora_up.weight"].reshape(out, -1)
        if kind == "locon_tucker":
            down = f["lora_down.weight"].reshape(RANK, -1)
            delta = torch.zeros_like(w)
            for y in range(w.shape[2]):
                for x in range(w.shape[3]):
                    delta[:, :, y, x] = up @ f["lora_mid.weight"][:, :, y, x] @ down
        else:
            delta = (up @ f["lora_down.weight"].reshape(RANK, -1)).reshape(w.shape)
        delta = delta * float(f.get("alpha", RANK)) / RANK  # no alpha (PEFT files): alpha = rank
        if kind == "dora":
            merged = w + delta
            columns = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
            shape = [1, -1] + [1] * (w.dim() - 2)
            delta = merged * (f["dora_scale"].reshape(shape) / columns.reshape(shape)) - w
        return w + strength * delta
    if kind == "loha":
        delta = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
        return w + strength * float(f["alpha"]) / RANK * delta.reshape(w.shape)
    if kind == "loha_tucker":
        halves = []
        for i in (1, 2):
            part = torch.zeros_like(w)
            for y in range(w.shape[2]):
                for x in range(w.shape[3]):
                    part[:, :, y, x] = f[f"hada_w{i}_a"].T @ f[f"hada_t{i}"][:, :, y, x] @ f[f"hada_w{i}_b"]
            halves.append(part)
        return w + strength * float(f["alpha"]) / RANK * halves[0] * halves[1]
    if kind in ("lokr", "lokr_full"):
        w1 = f["lokr_w1"]
        c, d = out // w1.shape[0], w.shape[1] // w1.shape[1]
        if kind == "lokr_full":
            w2, scale = f["lokr_w2"], 1.0
        else:
            w2, scale = f["lokr_w2_a"] @ f["lokr_w2_b"], float(f["alpha"]) / RANK
        w2 = w2.reshape(c, d, *w.shape[2:])
        # Block (i, j) of the change is w1[i, j] * w2.
        delta = torch.einsum("ij,kl...->ikjl...", w1, w2).reshape(w.shape)
        return w + strength * scale * delta
    if kind in ("oft_kohya", "oft_diag"):
        blocks = f["oft_blocks"] if kind == "oft_kohya" else f["oft_diag"]
        if kind == "oft_kohya":
            q = blocks - blocks.transpose(1, 2)
            norm = q.norm()
            q = q * (min(norm, float(f["alpha"]) * out) + 1e-8) / (norm + 1e-8)
            eye = torch.eye(blocks.shape[1], dtype=q.dtype)
            blocks = torch.linalg.solve(eye - q, eye + q)  # (I - Q)^-1 (I + Q) = (I + Q)(I - Q)^-1
        rotation = torch.block_diag(*blocks)
        rotated = (rotation.T @ w.reshape(out, -1)).reshape(w.shape)
        return w + strength * (rotated - w)
    if kind == "boft":
        rotations = f["oft_diag"]
        size = rotations.shape[2]
        rows = w.reshape(out, -1)
        for stage in range(rotations.shape[0]):
            span = 2 ** stage * size // 2
            order = [group * 2 * span + g * span + k for group in range(out // (2 * span))
                     for k in range(span) for g in (0, 1)]
            inverse = [order.index(i) for i in range(out)]
            rows = (torch.block_diag(*rotations[stage]) @ rows[order])[inverse]
        return w + strength * (rows.reshape(w.shape) - w)
    if kind == "ia3":
        return w + strength * w * f["weight"].reshape(-1, *[1] * (w.dim() - 1))
    if kind == "ia3_input":
        return w + strength * w * f["weight"].reshape(1, -1, *[1] * (w.dim() - 2))
    if kind == "full":
        return w + strength * f["diff"]
    if kind == "norm":
        return w + strength * f["w_norm"]
    raise ValueError(kind)


def expected_bias(kind: str, bias: torch.Tensor, f: dict, strength: float) -> torch.Tensor:
    extra = {"full": "diff_b", "norm": "b_norm"}.get(kind)
    return bias.double() + strength * f[extra].double() if extra else bias.double()

"""Our MAE as `transformers.ViTMAEForPreTraining`: the same configuration and exactly the same
weights. The numerical reference of the tests and the speed reference of the benchmarks, and a
way to hand a pretrained MAE to code built on transformers."""
from __future__ import annotations

import torch

from pretrain_mae.model import MaskedAutoencoder


def to_transformers(mae: MaskedAutoencoder, attn_implementation: str = "sdpa"):
    """A ViTMAEForPreTraining holding exactly `mae`'s weights (all of them: built from scratch,
    transformers 5.x leaves position tables and tokens at zero)."""
    import transformers

    c = mae.mae_config
    cfg = transformers.ViTMAEConfig(
        image_size=c["img_size"], patch_size=c["patch_size"], num_channels=c["in_chans"],
        hidden_size=c["embed_dim"], num_hidden_layers=c["depth"], num_attention_heads=c["num_heads"],
        intermediate_size=int(c["embed_dim"] * c["mlp_ratio"]),
        decoder_hidden_size=c["decoder_embed_dim"], decoder_num_hidden_layers=c["decoder_depth"],
        decoder_num_attention_heads=c["decoder_num_heads"],
        decoder_intermediate_size=int(c["decoder_embed_dim"] * c["mlp_ratio"]),
        layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True, mask_ratio=0.75,
        norm_pix_loss=mae.norm_pix_loss, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation=attn_implementation)
    hf = transformers.ViTMAEForPreTraining(cfg).eval()
    hf.load_state_dict(hf_names(mae.state_dict(), hf.state_dict()), strict=True)
    return hf


def hf_names(sd: dict[str, torch.Tensor], hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (timm / reference) names -> transformers' names, for its 5.x and 4.x layouts."""
    v5 = any(".layers.0.attention.q_proj." in k for k in hf_sd)
    block = ({"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
              "attn.proj": "attention.o_proj", "norm1": "layernorm_before", "norm2": "layernorm_after",
              "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"} if v5 else
             {"q": "attention.attention.query", "k": "attention.attention.key",
              "v": "attention.attention.value", "attn.proj": "attention.output.dense",
              "norm1": "layernorm_before", "norm2": "layernorm_after",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"})
    stacks = {"blocks": "vit.layers" if v5 else "vit.encoder.layer",
              "decoder_blocks": "decoder.decoder_layers"}
    flat = {"cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
            "patch_embed.proj": "vit.embeddings.patch_embeddings.projection", "norm": "vit.layernorm",
            "mask_token": "decoder.mask_token", "decoder_pos_embed": "decoder.decoder_pos_embed",
            "decoder_embed": "decoder.decoder_embed", "decoder_norm": "decoder.decoder_norm",
            "decoder_pred": "decoder.decoder_pred"}
    out = {}
    for key, value in sd.items():
        if key in flat:  # a bare parameter
            out[flat[key]] = value
            continue
        base, kind = key.rsplit(".", 1)  # kind: weight / bias
        stack, _, rest = base.partition(".")
        if stack not in stacks:
            out[f"{flat[base]}.{kind}"] = value
            continue
        i, _, name = rest.partition(".")
        prefix = f"{stacks[stack]}.{i}."
        if name == "attn.qkv":  # rows are [q; k; v]: timm reshapes to (3, heads, head_dim)
            for part, chunk in zip("qkv", value.chunk(3)):
                out[f"{prefix}{block[part]}.{kind}"] = chunk
        else:
            out[f"{prefix}{block[name]}.{kind}"] = value
    return out

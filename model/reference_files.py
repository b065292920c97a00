"""The reference DETR's own files: a release .pth (its construction arguments inferred from key
names and shapes) and a Hugging Face DETR folder (its weights renamed to the reference's)."""
from __future__ import annotations

import json
import re
from typing import Any

import pyarrow.fs as pafs
import torch
from safetensors.torch import load as load_safetensors

import storage as uris

from .config import DetrConfig
from .safe_load import HF_WEIGHT_FILES, CheckpointError, safe_torch_load

_BOTTLENECK_DEPTHS = {6: "resnet50", 23: "resnet101"}  # blocks in layer3
_BASIC_DEPTHS = {2: "resnet18", 6: "resnet34"}


def reference_config(
    state_dict: dict[str, torch.Tensor], args: Any, source: str, dilation: bool | None
) -> DetrConfig:
    """Infer the construction arguments from a reference state_dict's key names and shapes
    (a panoptic release's keys are its DETRsegm's: the DETR's under `detr.`)."""
    masks = any(k.startswith("mask_head.") for k in state_dict)
    if masks:
        state_dict = {k[len("detr."):]: v for k, v in state_dict.items() if k.startswith("detr.")}
    try:
        layer3 = {int(m.group(1)) for k in state_dict if (m := re.match(r"backbone\.0\.body\.layer3\.(\d+)\.", k))}
        bottleneck = "backbone.0.body.layer1.0.conv3.weight" in state_dict
        backbone = (_BOTTLENECK_DEPTHS if bottleneck else _BASIC_DEPTHS).get(len(layer3))
        if backbone is None:
            raise CheckpointError(f"{source}: no ResNet has {len(layer3)} blocks in layer3")

        def count(prefix: str) -> int:
            return len({k.split(".")[3] for k in state_dict if k.startswith(prefix)})

        if dilation is None:
            dilation = bool(getattr(args, "dilation", False)) or "dc5" in source.lower()
        return DetrConfig(
            backbone=backbone,
            dilation=dilation,
            hidden_dim=state_dict["input_proj.weight"].shape[0],
            nheads=getattr(args, "nheads", 8),
            enc_layers=count("transformer.encoder.layers."),
            dec_layers=count("transformer.decoder.layers."),
            dim_feedforward=state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0],
            dropout=getattr(args, "dropout", 0.1),
            num_queries=state_dict["query_embed.weight"].shape[0],
            num_classes=state_dict["class_embed.weight"].shape[0] - 1,
            aux_loss=getattr(args, "aux_loss", True),
            masks=masks,
            stuff_classes=panoptic_stuff(state_dict["class_embed.weight"].shape[0] - 1) if masks else (),
        )
    except KeyError as e:
        raise CheckpointError(f"{source} lacks the reference DETR key {e}") from e


# Hugging Face DetrForObjectDetection -> reference names. Checkpoints on the hub use the
# legacy names (backbone.conv_encoder, out_proj, fc1); transformers 5 renames them in memory.
_HF_NORMALISE = [
    (r"^model\.backbone\.model\.", "model.backbone.conv_encoder.model."),
    (r"\.o_proj\.", ".out_proj."),
    (r"\.mlp\.fc(\d)\.", r".fc\1."),
]
_HF_RENAMES = [
    (r"^model\.backbone\.conv_encoder\.model\.", "backbone.0.body."),
    (r"^model\.input_projection\.", "input_proj."),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^model\.decoder\.layernorm\.", "transformer.decoder.norm."),
    (r"^model\.(encoder|decoder)\.layers\.", r"transformer.\1.layers."),
    (r"\.encoder_attn\.", ".multihead_attn."),
    (r"\.self_attn_layer_norm\.", ".norm1."),
    (r"(decoder\.layers\.\d+)\.encoder_attn_layer_norm\.", r"\1.norm2."),
    (r"(encoder\.layers\.\d+)\.final_layer_norm\.", r"\1.norm2."),
    (r"(decoder\.layers\.\d+)\.final_layer_norm\.", r"\1.norm3."),
    (r"\.fc1\.", ".linear1."),
    (r"\.fc2\.", ".linear2."),
    (r"^class_labels_classifier\.", "class_embed."),
    (r"^bbox_predictor\.", "bbox_embed."),
]


def panoptic_stuff(num_classes: int) -> tuple[int, ...]:
    """The stuff classes of a reference (or Hugging Face) panoptic model: the releases' rule
    (is_thing_map: ids up to 90 are things, COCO's 80; COCO panoptic's stuff ids are above)."""
    return tuple(range(91, num_classes))


def read_huggingface(source: str) -> tuple[DetrConfig, dict[str, torch.Tensor], None]:
    hf = json.loads(uris.read_bytes(uris.join(source, "config.json")))
    config = huggingface_config(hf, source)
    for name in HF_WEIGHT_FILES:
        weights_uri = uris.join(source, name)
        if uris.file_type(weights_uri) == pafs.FileType.File:
            data = uris.read_bytes(weights_uri)
            if name.endswith(".safetensors"):
                hf_state = load_safetensors(data)
            else:
                hf_state = safe_torch_load(data, weights_uri)
            state_dict = huggingface_to_reference(hf_state)
            masks = any(k.startswith("mask_head.") for k in state_dict)  # DetrForSegmentation
            head = "detr.class_embed.weight" if masks else "class_embed.weight"
            if head in state_dict:  # config.json may omit id2label
                config = config.replace(num_classes=state_dict[head].shape[0] - 1)
            if masks:
                config = config.replace(masks=True, stuff_classes=panoptic_stuff(config.num_classes))
            return config, state_dict, None
    raise CheckpointError(f"{source} has config.json but none of {HF_WEIGHT_FILES}")


def huggingface_config(hf: dict[str, Any], source: str) -> DetrConfig:
    if hf.get("position_embedding_type", "sine") != "sine":
        raise CheckpointError(f"{source}: only sine position embeddings are supported")
    if hf.get("activation_function", "relu") != "relu":
        raise CheckpointError(f"{source}: only relu activations are supported")
    for a, b in (("encoder_ffn_dim", "decoder_ffn_dim"), ("encoder_attention_heads", "decoder_attention_heads")):
        if hf.get(a) != hf.get(b):
            raise CheckpointError(f"{source}: {a} {hf.get(a)} != {b} {hf.get(b)}; DETR shares one value")
    backbone_config = hf.get("backbone_config") or {}
    if backbone_config.get("model_type", "timm_backbone") != "timm_backbone" or hf.get("use_timm_backbone") is False:
        raise CheckpointError(f"{source}: only the timm ResNet backbone layout (facebook/detr-resnet-*) is supported")
    backbone = hf.get("backbone") or backbone_config.get("backbone") or "resnet50"
    backbone = backbone.split("/")[-1].split(".")[0]  # e.g. "timm/resnet50.a1_in1k" -> "resnet50"
    num_labels = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 91)
    return DetrConfig(
        backbone=backbone,
        dilation=bool(hf.get("dilation", False)),
        hidden_dim=hf.get("d_model", 256),
        nheads=hf.get("encoder_attention_heads", 8),
        enc_layers=hf.get("encoder_layers", 6),
        dec_layers=hf.get("decoder_layers", 6),
        dim_feedforward=hf.get("encoder_ffn_dim", 2048),
        dropout=hf.get("dropout", 0.1),
        num_queries=hf.get("num_queries", 100),
        num_classes=num_labels,
        aux_loss=True,
    )


def huggingface_to_reference(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a DetrForObjectDetection state_dict to reference keys, packing q/k/v projections; a
    DetrForSegmentation's box model is under `detr.` (renamed alike) and its mask head keeps the
    reference's names (bbox_attention.*, mask_head.*)."""
    if any(k.startswith("mask_head.") for k in hf_state):
        boxes = huggingface_to_reference({k[len("detr."):]: v for k, v in hf_state.items() if k.startswith("detr.")})
        return {**{f"detr.{k}": v for k, v in boxes.items()},
                **{k: v for k, v in hf_state.items() if k.startswith(("bbox_attention.", "mask_head."))}}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        for pattern, replacement in _HF_NORMALISE + _HF_RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    packed: dict[str, torch.Tensor] = {}
    for key, value in renamed.items():
        m = re.match(r"(.*\.(?:self_attn|multihead_attn))\.([qkv])_proj\.(weight|bias)$", key)
        if m is None:
            packed[key] = value
        elif m.group(2) == "q":
            prefix, kind = m.group(1), m.group(3)
            parts = [renamed.get(f"{prefix}.{p}_proj.{kind}") for p in "qkv"]
            if any(p is None for p in parts):
                raise CheckpointError(f"{prefix} lacks one of its q/k/v projections")
            packed[f"{prefix}.in_proj_{kind}"] = torch.cat([p for p in parts if p is not None])
    return packed

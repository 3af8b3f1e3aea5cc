"""A foundation-sized VisionEncoderDecoder with seeded weights, for speed work only:
ViT-B/16 at 448 px (86 M parameters) + a GPT-2-base decoder with cross attention (vocabulary
50257, 12 layers, 768 wide: 153 M parameters), exported by optimum as users export theirs.

    python foundation.py OUT_DIR

Writes OUT_DIR/hf (the PyTorch checkpoint, for the PyTorch peer), the ONNX export and configs
in OUT_DIR, pixels0.npy and reference.json (greedy tokens of `model.generate` for the parity
check of the big model).
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTImageProcessor, ViTModel, VisionEncoderDecoderModel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "training", "report"))
from tiny_fixture import build as tiny  # noqa: E402  (its tokenizer: vocabulary 300 of the model's 50257)


def main(out):
    torch.manual_seed(1)
    _, fast, _, (_, _, pad, bos, eos) = tiny()
    enc = ViTConfig(image_size=448, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    dec = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, add_cross_attention=True,
                     bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model = VisionEncoderDecoderModel(encoder=ViTModel(enc, add_pooling_layer=False), decoder=GPT2LMHeadModel(dec))
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = bos
        cfg.pad_token_id = pad
        cfg.eos_token_id = eos
    model.eval()
    print("parameters: encoder %.1f M, decoder %.1f M" % (
        sum(p.numel() for p in model.encoder.parameters()) / 1e6, sum(p.numel() for p in model.decoder.parameters()) / 1e6))
    hf = os.path.join(out, "hf")
    os.makedirs(hf, exist_ok=True)
    model.save_pretrained(hf)
    fast.save_pretrained(hf)
    proc = ViTImageProcessor(size={"height": 448, "width": 448}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc.save_pretrained(hf)
    from optimum.exporters.onnx import main_export

    main_export(hf, output=out, task="image-to-text-with-past", opset=17, do_validation=False)
    px = np.random.default_rng(7).standard_normal((1, 3, 448, 448)).astype(np.float32)
    np.save(os.path.join(out, "pixels0.npy"), px)
    with torch.no_grad():
        seq = model.generate(pixel_values=torch.from_numpy(px), do_sample=False, max_new_tokens=16, min_new_tokens=16)[0].tolist()
    json.dump({"cases": [{"input": "pixels0.npy", "setting": "greedy16", "tokens": seq}]}, open(os.path.join(out, "reference.json"), "w"))
    print("greedy tokens", seq)


if __name__ == "__main__":
    main(sys.argv[1])

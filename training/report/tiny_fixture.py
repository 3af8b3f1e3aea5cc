"""Makes the token-parity fixture of medinfer's generation engine with the real `transformers`.

A small randomly initialised VisionEncoderDecoder (ViT encoder + GPT-2 decoder with cross
attention), a byte-level BPE tokenizer trained here on findings sentences, exported to ONNX by
optimum's own exporter (the layout users have: encoder_model.onnx, decoder_model.onnx,
decoder_with_past_model.onnx, decoder_model_merged.onnx, config.json, generation_config.json,
preprocessor_config.json, tokenizer.json), plus `reference.json`: the tokens and text that
`model.generate` gives in PyTorch for each input and decoding setting.

Run once (outputs are committed; the tests compare against them):
    python="$(training/report/venv.sh)"
    "$python" training/report/tiny_fixture.py crates/medinfer-generate/tests/fixtures/tiny-ved
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
    VisionEncoderDecoderModel,
)

SIZES = ["Mild", "Moderate", "Severe", "Small", "Large", "Trace"]
SIDES = ["left", "right", "bilateral"]
FINDINGS = [
    "{size} cardiomegaly.",
    "{size} {side} pleural effusion.",
    "No pneumothorax.",
    "{size} {side} pneumothorax.",
    "Nodule in the {side} upper lobe.",
    "Consolidation of the {side} lower lobe.",
    "Endotracheal tube tip 4 cm above the carina.",
    "The heart size is normal.",
    "Lungs are clear.",
    "No pleural effusion.",
]


def corpus(n, rng):
    for _ in range(n):
        k = rng.integers(1, 4)
        parts = [
            FINDINGS[i].format(size=SIZES[rng.integers(len(SIZES))], side=SIDES[rng.integers(len(SIDES))])
            for i in rng.choice(len(FINDINGS), size=k, replace=False)
        ]
        yield " ".join(parts)


def tokenizer(rng):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus(2000, rng)), trainer)
    return tok


def build():
    """The tiny model, its fast tokenizer and image processor (deterministic: seeded)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tok = tokenizer(rng)
    pad, bos, eos = (tok.token_to_id(t) for t in ["<pad>", "<s>", "</s>"])
    vocab = tok.get_vocab_size()

    enc = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    dec = GPT2Config(
        vocab_size=vocab,
        n_positions=40,
        n_embd=32,
        n_layer=2,
        n_head=4,
        add_cross_attention=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=False,
        initializer_range=0.3,
    )
    model = VisionEncoderDecoderModel(encoder=ViTModel(enc, add_pooling_layer=False), decoder=GPT2LMHeadModel(dec))
    with torch.no_grad():
        # Random weights rarely choose one token of 300: make EOS likelier so that the finished
        # hypotheses, EOS handling and length penalty are exercised.
        model.decoder.lm_head.weight[eos] *= 2.5
    model.config.decoder_start_token_id = bos
    model.config.pad_token_id = pad
    model.config.eos_token_id = eos
    model.generation_config.decoder_start_token_id = bos
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = eos
    model.generation_config.bos_token_id = bos
    model.generation_config.max_new_tokens = 24
    model.eval()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    proc = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return model, fast, proc, (enc, dec, pad, bos, eos)


def main(out):
    model, fast, proc, (enc, dec, pad, bos, eos) = build()
    work = tempfile.mkdtemp()
    try:
        hf = os.path.join(work, "hf")
        model.save_pretrained(hf)
        fast.save_pretrained(hf)
        proc.save_pretrained(hf)

        from optimum.exporters.onnx import main_export

        os.makedirs(out, exist_ok=True)
        main_export(hf, output=out, task="image-to-text-with-past", opset=17, do_validation=False)
        # An encoder of another model (hidden size 48): the loader must refuse the pair.
        other = VisionEncoderDecoderModel(
            encoder=ViTModel(ViTConfig(**{**enc.to_dict(), "hidden_size": 48}), add_pooling_layer=False),
            decoder=GPT2LMHeadModel(GPT2Config(**{**dec.to_dict(), "n_embd": 48})),
        )
        other.config.decoder_start_token_id = bos
        other.config.pad_token_id = pad
        other_dir = os.path.join(work, "other")
        other.save_pretrained(other_dir)
        fast.save_pretrained(other_dir)
        proc.save_pretrained(other_dir)
        main_export(other_dir, output=os.path.join(work, "other-onnx"), task="image-to-text-with-past", opset=17, do_validation=False)
        shutil.copy(os.path.join(work, "other-onnx", "encoder_model.onnx"), os.path.join(out, "other_encoder_hidden48.onnx"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # Inputs: seeded pixel tensors (what the encoder sees) and one PNG through the processor.
    cases = []
    inputs = {}
    g = np.random.default_rng(7)
    for i in range(4):
        px = g.standard_normal((1, 3, 32, 32)).astype(np.float32)
        name = f"pixels{i}.npy"
        np.save(os.path.join(out, name), px)
        inputs[name] = px
    img = (np.clip(g.standard_normal((45, 61)) * 40 + 120, 0, 255)).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(out, "image.png"))
    px = proc(images=Image.open(os.path.join(out, "image.png")).convert("RGB"), return_tensors="np")["pixel_values"]
    np.save(os.path.join(out, "image_pixels.npy"), px.astype(np.float32))
    inputs["image.png"] = px.astype(np.float32)

    settings = [
        {"name": "greedy", "num_beams": 1},
        {"name": "beam4", "num_beams": 4},
        {"name": "beam3_lp0.6_ngram2", "num_beams": 3, "length_penalty": 0.6, "no_repeat_ngram_size": 2},
        {"name": "beam4_lp2_short", "num_beams": 4, "length_penalty": 2.0, "max_new_tokens": 10},
        {"name": "greedy_rep1.5", "num_beams": 1, "repetition_penalty": 1.5},
        {"name": "greedy_ngram3", "num_beams": 1, "no_repeat_ngram_size": 3},
    ]
    with torch.no_grad():
        for name, px in inputs.items():
            enc_out = model.encoder(pixel_values=torch.from_numpy(px)).last_hidden_state
            for s in settings:
                kw = {k: v for k, v in s.items() if k != "name"}
                kw.setdefault("max_new_tokens", 24)
                seq = model.generate(pixel_values=torch.from_numpy(px), do_sample=False, **kw)[0].tolist()
                # Smallest top-1 / top-2 logit margin along the chosen path: how robust the
                # reference is to float differences between engines.
                margins = []
                for t in range(1, len(seq)):
                    logits = model.decoder(
                        input_ids=torch.tensor([seq[:t]]), encoder_hidden_states=enc_out
                    ).logits[0, -1]
                    top = torch.topk(logits, 2).values
                    margins.append(float(top[0] - top[1]))
                cases.append(
                    {
                        "input": name,
                        "setting": s["name"],
                        "generate_kwargs": kw,
                        "tokens": seq,
                        "text": fast.decode(seq, skip_special_tokens=True),
                        "min_margin": min(margins),
                        "ends_with_eos": seq[-1] == eos,
                    }
                )
    ref = {
        "made_by": "training/report/tiny_fixture.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "special": {"pad": pad, "bos": bos, "eos": eos},
        "cases": cases,
        "tokenizer_checks": [
            {"text": t, "ids": fast.encode(t, add_special_tokens=False)}
            for t in ["Moderate cardiomegaly. Small left pleural effusion.", "No pneumothorax.", "Tip 4 cm"]
        ],
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    for c in cases:
        print(c["input"], c["setting"], len(c["tokens"]), c["ends_with_eos"], f"{c['min_margin']:.4f}", repr(c["text"][:60]))


if __name__ == "__main__":
    main(sys.argv[1])

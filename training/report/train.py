"""Trains the phantom chest X-ray report model: a small ViT encoder + GPT-2 decoder
(VisionEncoderDecoder) on `medinfer phantom cxr` radiographs and their findings text, then
exports it with optimum as users export theirs.

    python="$(training/report/venv.sh)"
    medinfer phantom cxr -o /tmp/cxr-train --count 3000 --first-seed 1
    "$python" training/report/train.py /tmp/cxr-train models/report [--epochs 12]

Besides the captioning loss, a linear head on the mean and the maximum of the encoder's tokens
learns the study's labels (binary cross-entropy, weight `--aux`): the text alone gives the
encoder a weak signal for small findings (a nodule is a few tokens of a long sentence), the
labels a direct one, and the maximum lets a finding held by one patch count. The head is used at
export: `classifier.onnx` (encoder + head, one channel in [0, 1], the labels' logits) with
`classifier.json`, a model for medinfer's multi-label CXR pipeline. OUT/hf keeps the PyTorch
checkpoint (the PyTorch peer of benchmarks/report).

Images are mapped to 8 bits exactly as medinfer's ViT processor maps a 16-bit PNG (its own
min..max to 0..255), then resized, rescaled and normalised by ViTImageProcessor. Seeds from
100000 up are never used for training (held out for `medinfer phantom cxr-eval`).
"""
import argparse
import json
import os
import shutil
import tempfile
import time

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

LABELS = ["cardiomegaly", "pleural_effusion", "pneumothorax", "nodule", "mass", "consolidation",
          "support_device", "normal"]

ap = argparse.ArgumentParser()
ap.add_argument("data")
ap.add_argument("out")
ap.add_argument("--size", type=int, default=256, help="input side in pixels")
ap.add_argument("--aux", type=float, default=1.0, help="weight of the label head's loss")
ap.add_argument("--epochs", type=int, default=12)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--threads", type=int, default=os.cpu_count())
a = ap.parse_args()
SIZE = a.size
torch.manual_seed(0)
torch.set_num_threads(a.threads)

rows = [json.loads(l) for l in open(os.path.join(a.data, "reports.jsonl"))]
texts = [r["text"] for r in rows]
C = np.array([[float(r["labels"][l]) for l in LABELS] for r in rows], dtype=np.float32)

tok = Tokenizer(models.BPE(unk_token=None))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(
    texts,
    trainers.BpeTrainer(vocab_size=512, special_tokens=["<pad>", "<s>", "</s>"],
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
)
pad, bos, eos = (tok.token_to_id(t) for t in ["<pad>", "<s>", "</s>"])
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
proc = ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def pixels(path):
    a = np.array(Image.open(path)).astype(np.float64)
    a = np.round((a - a.min()) / max(a.max() - a.min(), 1e-6) * 255.0).astype(np.uint8)
    rgb = Image.fromarray(a).convert("RGB")
    return proc(images=rgb, return_tensors="np")["pixel_values"][0]


t0 = time.time()
X = np.stack([pixels(os.path.join(a.data, r["image"])) for r in rows]).astype(np.float32)
ids = [[bos] + tok.encode(t).ids + [eos] for t in texts]
L = max(len(i) for i in ids)
Y = np.full((len(ids), L), pad, dtype=np.int64)
for k, i in enumerate(ids):
    Y[k, : len(i)] = i
print(f"{len(rows)} studies, images {X.shape}, tokens up to {L}, vocab {tok.get_vocab_size()} ({time.time()-t0:.0f} s)", flush=True)

enc = ViTConfig(image_size=SIZE, patch_size=16, num_channels=3, hidden_size=192, num_hidden_layers=4,
                num_attention_heads=3, intermediate_size=768)
dec = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=96, n_embd=192, n_layer=3, n_head=3,
                 add_cross_attention=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
model = VisionEncoderDecoderModel(encoder=ViTModel(enc, add_pooling_layer=False), decoder=GPT2LMHeadModel(dec))
for cfg in (model.config, model.generation_config):
    cfg.decoder_start_token_id = bos
    cfg.pad_token_id = pad
    cfg.eos_token_id = eos
model.generation_config.max_new_tokens = 80
# transformers 4.57's VisionEncoderDecoder falls back to the causal-LM loss, which shifts the
# labels once more; the labels below are already shifted, so take the unshifted loss.
model.loss_type = "ForMaskedLM"
head = torch.nn.Linear(2 * enc.hidden_size, len(LABELS))


def pooled(h):
    """Mean and maximum over the encoder's tokens, side by side."""
    return torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=-1)


print("parameters %.2f M" % (sum(p.numel() for p in model.parameters()) / 1e6), flush=True)

n_val = max(50, len(rows) // 20)
idx = np.random.default_rng(0).permutation(len(rows))
val, train = idx[:n_val], idx[n_val:]
params = list(model.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
steps = a.epochs * (len(train) // a.batch)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.1)


def loss_of(b):
    """(captioning loss, label-head loss, label logits) of the studies b."""
    x = torch.from_numpy(X[b])
    y = torch.from_numpy(Y[b])
    labels = y[:, 1:].clone()
    labels[labels == pad] = -100
    out = model(pixel_values=x, decoder_input_ids=y[:, :-1], labels=labels)
    logits = head(pooled(out.encoder_last_hidden_state))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(C[b]))
    return out.loss, bce, logits


def auc(y, s):
    """Area under the ROC curve (ties counted half); nan without both classes."""
    pos, neg = s[y > 0.5], s[y <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()))


rng = np.random.default_rng(1)
step = 0
for ep in range(a.epochs):
    model.train()
    perm = rng.permutation(train)
    tot = 0.0
    for s in range(len(train) // a.batch):
        b = perm[s * a.batch:(s + 1) * a.batch]
        cap, bce, _ = loss_of(b)
        loss = cap + a.aux * bce
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        tot += cap.item()
        step += 1
    model.eval()
    with torch.no_grad():
        parts = [loss_of(val[i:i + 64]) for i in range(0, len(val), 64)]
    vl = float(np.mean([p[0].item() for p in parts]))
    scores = torch.cat([p[2] for p in parts]).numpy()
    aucs = {l: auc(C[val, k], scores[:, k]) for k, l in enumerate(LABELS)}
    print(f"epoch {ep + 1}/{a.epochs}: train loss {tot / (len(train) // a.batch):.4f}, validation {vl:.4f}, "
          f"label AUC {' '.join(f'{l[:5]} {v:.3f}' for l, v in aucs.items())} ({time.time()-t0:.0f} s)", flush=True)

with torch.no_grad():
    for k in val[:3]:
        g = model.generate(pixel_values=torch.from_numpy(X[k:k + 1]), max_new_tokens=80)[0].tolist()
        print("truth:", texts[k], "\n  got:", fast.decode(g, skip_special_tokens=True), flush=True)

work = tempfile.mkdtemp()
try:
    hf = os.path.join(work, "hf")
    model.save_pretrained(hf)
    fast.save_pretrained(hf)
    proc.save_pretrained(hf)
    from optimum.exporters.onnx import main_export

    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    main_export(hf, output=a.out, task="image-to-text-with-past", opset=17, do_validation=False)
    for f in ["decoder_model_merged.onnx"]:
        p = os.path.join(a.out, f)
        if os.path.exists(p):
            os.remove(p)  # medinfer runs the split pair (hoisting); keep the folder small

    class Classifier(torch.nn.Module):
        """One channel in [0, 1] (medinfer's `minmax`), the report model's ViT normalisation
        and channels inside, the label head's logits out."""

        def __init__(self):
            super().__init__()
            self.encoder, self.head = model.encoder, head

        def forward(self, x):
            x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1)
            return self.head(pooled(self.encoder(pixel_values=x).last_hidden_state))

    torch.onnx.export(Classifier().eval(), (torch.zeros(1, 1, SIZE, SIZE),), os.path.join(a.out, "classifier.onnx"),
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    json.dump({"pipeline": "cxr", "input": {"size": [SIZE, SIZE], "channels": 1},
               "normalization": {"kind": "minmax"}, "labels": LABELS, "output": {"activation": "sigmoid"}},
              open(os.path.join(a.out, "classifier.json"), "w"), indent=1)
    # The PyTorch checkpoint alone (tokenizer and processor files are the export's).
    os.makedirs(os.path.join(a.out, "hf"))
    for f in ["config.json", "generation_config.json", "model.safetensors"]:
        shutil.copy(os.path.join(hf, f), os.path.join(a.out, "hf", f))
finally:
    shutil.rmtree(work, ignore_errors=True)
json.dump({"studies": len(rows), "validation_loss": vl, "validation_label_auc": aucs, "epochs": a.epochs,
           "image_size": SIZE, "aux_weight": a.aux,
           "torch": torch.__version__, "transformers": __import__("transformers").__version__},
          open(os.path.join(a.out, "training.json"), "w"), indent=1)
print("exported to", a.out)

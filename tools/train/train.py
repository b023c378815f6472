"""Trains the demo model: a tiny LLaVA-1.5 and then Dynamic-LLaVA on it, on the shapes task.

Stage 1 (LLaVA-1.5, dense): a CLIP-style ViT (pre-LN, CLS token, quick_gelu; features from the
second-to-last layer with the CLS token dropped), the mlp2x_gelu projector and a LLaMA decoder,
trained together from scratch on the tokenised sequences of tools/train/make_data.ts (loss on
answer tokens only). CLIP's own contrastive pretraining is out of reach here, so the tower also
gets a per-patch auxiliary loss in both stages (a linear head on the selected features, dropped at
export): which colour-kind pairs cover each patch, and which object's box centre lies in it. It
teaches the tower what and where in minutes instead of hours; the LLM still learns only from answers.

Stage 2 (Dynamic-LLaVA): the image score predictor and the output text score predictor read the
hidden states entering decoder layer l. Their two-class logits go through log_softmax and a
straight-through Gumbel-Softmax (hard=True) whose temperature decays exponentially from 1.0 to
0.1; column 0 is the keep decision. Layers >= l use the masked softmax (keys of dropped tokens
weighted 0, every token always sees itself), and the loss adds
mask_loss_weight * ((r_I - mean image keep)^2 + (r_OT - mean output text keep)^2), the output
text part only for answers of at least 50 tokens. The LLM is fine-tuned with the predictors.

Export: the official Dynamic-LLaVA layout (config.json with mm_* keys and sparse_config,
model.safetensors in F16, tokenizer.json, the CLIP tower as a folder `clip/` beside them), and
check.json: last-position logits of a few validation prompts (dense and dynamic prefill),
computed from the F16-rounded weights, for tools/train/check.ts.

    python3 tools/train/train.py --data tools/train/out --out tools/train/out/model
"""

import argparse
import json
import math
import os
import random
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from scenes_pillow import SCENE_SIZE, draw_scene, shape_polygon  # noqa: E402
from PIL import ImageDraw  # noqa: E402

IMAGE_TOKEN_INDEX = -200
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VISION = dict(image_size=112, patch_size=14, hidden_size=96, intermediate_size=384,
              num_attention_heads=3, num_hidden_layers=3)
TEXT = dict(hidden_size=96, intermediate_size=256, num_attention_heads=3, num_hidden_layers=4,
            vocab_size=None)  # vocab_size: from the tokenizer
SPARSE = dict(d_model=64, nhead=4, dim_feedforward=128, num_layers=2, sparse_layer=1,
              vision_keep_rate=0.2, output_text_keep_rate=0.5, output_text_len_for_training=50,
              mask_loss_weight=100.0)


def preprocess(image, image_size):
    """LLaVA-1.5 preprocessing of a square RGB image: bicubic resize, CLIP normalisation. [3, S, S]"""
    resized = np.asarray(image.resize((image_size, image_size), Image.BICUBIC), dtype=np.float32) / 255.0
    mean = np.array(CLIP_MEAN, dtype=np.float32)
    std = np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).copy())


def augmented_pixels(scene, rng, image_size):
    """Training view: random antialiasing, small colour jitter and noise."""
    def jitter(rgb):
        return tuple(int(min(255, max(0, c + rng.randint(-8, 8)))) for c in rgb)
    image = draw_scene(scene, scale=rng.choice([1, 1, 2, 3]), jitter=jitter if rng.random() < 0.5 else None)
    if rng.random() < 0.3:
        array = np.asarray(image, dtype=np.float32)
        array = array + np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, rng.uniform(1, 6), array.shape)
        image = Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8))
    return preprocess(image, image_size)


# ----------------------------------------------------------------------------- model

class ClipLayer(nn.Module):
    def __init__(self, width, inner, heads):
        super().__init__()
        self.heads = heads
        self.layer_norm1 = nn.LayerNorm(width, eps=1e-5)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.layer_norm2 = nn.LayerNorm(width, eps=1e-5)
        self.fc1 = nn.Linear(width, inner)
        self.fc2 = nn.Linear(inner, width)

    def forward(self, x):  # [B, T, W]
        B, T, W = x.shape
        h = self.layer_norm1(x)
        split = lambda t: t.view(B, T, self.heads, W // self.heads).transpose(1, 2)
        q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(W // self.heads), dim=-1)
        x = x + self.out_proj((att @ v).transpose(1, 2).reshape(B, T, W))
        f = self.fc1(self.layer_norm2(x))
        return x + self.fc2(f * torch.sigmoid(1.702 * f))


class ClipVision(nn.Module):
    """CLIP ViT; returns hidden_states[-2] without the CLS token: [B, N, W]."""

    def __init__(self, c):
        super().__init__()
        width, grid = c["hidden_size"], c["image_size"] // c["patch_size"]
        self.patch_embedding = nn.Conv2d(3, width, c["patch_size"], c["patch_size"], bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.02)
        self.position_embedding = nn.Embedding(grid * grid + 1, width)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        self.pre_layrnorm = nn.LayerNorm(width, eps=1e-5)
        self.layers = nn.ModuleList(
            ClipLayer(width, c["intermediate_size"], c["num_attention_heads"])
            for _ in range(c["num_hidden_layers"]))

    def forward(self, pixels):
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [B, N, W]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1) + self.position_embedding.weight
        x = self.pre_layrnorm(x)
        for layer in self.layers[:-1]:  # hidden_states[-2]: every layer but the last
            x = layer(x)
        return x[:, 1:]


class RMSNorm(nn.Module):
    def __init__(self, size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope_tables(positions, head_dim, theta=10000.0):
    """cos, sin [T, D] for positions [T] (HF rotate_half layout)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv[None]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def masked_softmax(scores, causal, policy, eps=1e-6):
    """Dynamic-LLaVA's softmax with a keep policy: scores [B,H,T,T], policy [B,T] (1 keep, 0 drop)."""
    T = scores.shape[-1]
    eye = torch.eye(T, dtype=scores.dtype)
    keep = policy[:, None, None, :]
    keep = (keep + (1.0 - keep) * eye) * causal
    scores = scores.masked_fill(causal == 0, -1e4)
    scores = scores - scores.max(dim=-1, keepdim=True)[0]
    weights = scores.exp() * keep
    return (weights + eps / T) / (weights.sum(-1, keepdim=True) + eps)


class LlamaLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        C, heads = c["hidden_size"], c["num_attention_heads"]
        self.heads, self.head_dim = heads, C // heads
        self.input_layernorm = RMSNorm(C)
        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = nn.Linear(C, C, bias=False)
        self.v_proj = nn.Linear(C, C, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)
        self.post_attention_layernorm = RMSNorm(C)
        self.gate_proj = nn.Linear(C, c["intermediate_size"], bias=False)
        self.up_proj = nn.Linear(C, c["intermediate_size"], bias=False)
        self.down_proj = nn.Linear(c["intermediate_size"], C, bias=False)

    def forward(self, x, cos, sin, causal, policy=None, hard_mask=None):
        B, T, C = x.shape
        h = self.input_layernorm(x)
        split = lambda t: t.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if policy is not None:
            att = masked_softmax(scores, causal, policy)
        else:
            allowed = causal if hard_mask is None else causal * hard_mask
            att = torch.softmax(scores.masked_fill(allowed == 0, float("-inf")), dim=-1)
        x = x + self.o_proj((att @ v).transpose(1, 2).reshape(B, T, C))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class PredictorBlock(nn.Module):
    """timm-style block: x + proj(MHSA(norm1 x)); x + fc2(GELU(fc1(norm2 x)))."""

    def __init__(self, d, heads, inner):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, inner)
        self.mlp.fc2 = nn.Linear(inner, d)

    def forward(self, x):
        B, N, d = x.shape
        qkv = self.attn.qkv(self.norm1(x)).view(B, N, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.attn.proj((att @ v).transpose(1, 2).reshape(B, N, d))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class VisionPredictor(nn.Module):
    def __init__(self, C, s):
        super().__init__()
        d = s["d_model"]
        self.down_mlp = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, d), nn.GELU())
        self.transformer = nn.ModuleList(
            PredictorBlock(d, s["nhead"], s["dim_feedforward"]) for _ in range(s["num_layers"]))
        self.output_mlp = nn.Sequential(nn.Linear(d, d // 2), nn.GELU(), nn.Linear(d // 2, d // 4), nn.GELU(),
                                        nn.Linear(d // 4, 2))

    def forward(self, x):  # [B, N, C] -> [B, N, 2]
        h = self.down_mlp(x)
        for block in self.transformer:
            h = block(h)
        half = h.shape[-1] // 2
        h = torch.cat([h[..., :half], h[..., half:].mean(dim=1, keepdim=True).expand(-1, h.shape[1], -1)], -1)
        return self.output_mlp(h)


class TextPredictor(nn.Module):
    def __init__(self, C, s):
        super().__init__()
        d = s["d_model"]
        self.output_mlp = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, d), nn.GELU(), nn.Linear(d, d // 2),
                                        nn.GELU(), nn.Linear(d // 2, d // 4), nn.GELU(), nn.Linear(d // 4, 2))

    def forward(self, x):
        return self.output_mlp(x)


class TinyLlava(nn.Module):
    def __init__(self):
        super().__init__()
        C = TEXT["hidden_size"]
        self.vision = ClipVision(VISION)
        self.mm_projector = nn.Sequential(nn.Linear(VISION["hidden_size"], C), nn.GELU(), nn.Linear(C, C))
        self.embed_tokens = nn.Embedding(TEXT["vocab_size"], C)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        self.layers = nn.ModuleList(LlamaLayer(TEXT) for _ in range(TEXT["num_hidden_layers"]))
        self.norm = RMSNorm(C)
        self.lm_head = nn.Linear(C, TEXT["vocab_size"], bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)
        self.image_score_predictor = VisionPredictor(C, SPARSE)
        self.output_text_score_predictor = TextPredictor(C, SPARSE)
        self.num_image_tokens = (VISION["image_size"] // VISION["patch_size"]) ** 2

    def embed(self, ids, pixels):
        """ids [B, L] with one -200 each at the same index → embeddings [B, T, C], image start."""
        at = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
        self.patch_features = self.vision(pixels)  # [B, N, W], read by the auxiliary patch loss
        image = self.mm_projector(self.patch_features)
        text = self.embed_tokens(ids.clamp(min=0))
        return torch.cat([text[:, :at], image, text[:, at + 1:]], dim=1), at

    def forward(self, ids, pixels, *, long_spans=None, tau=1.0, dynamic=False, hard_keep=None):
        """Final hidden states [B, T, C] and the keep masks (training, dynamic) or None.

        hard_keep: inference check, a [B, T] 0/1 tensor of the rows layers >= l may attend to.
        """
        x, at = self.embed(ids, pixels)
        B, T, _ = x.shape
        cos, sin = rope_tables(torch.arange(T), TEXT["hidden_size"] // TEXT["num_attention_heads"])
        causal = torch.tril(torch.ones(T, T))
        n = self.num_image_tokens
        policy, masks = None, None
        for index, layer in enumerate(self.layers):
            if dynamic and index == SPARSE["sparse_layer"]:
                policy, masks = self.keep_policy(x, at, long_spans, tau)
            hard = hard_keep[:, None, None, :] if hard_keep is not None and index >= SPARSE["sparse_layer"] else None
            x = layer(x, cos, sin, causal, policy=policy, hard_mask=hard)
        return self.norm(x), masks

    def keep_policy(self, x, at, long_spans, tau):
        """Gumbel straight-through keep decisions for the image and long answers: policy [B, T]."""
        n = self.num_image_tokens
        B, T, _ = x.shape
        image_logp = F.log_softmax(self.image_score_predictor(x[:, at:at + n]), dim=-1)
        image_keep = F.gumbel_softmax(image_logp, tau=tau, hard=True)[..., 0]  # [B, N]
        parts = [torch.ones(B, at), image_keep, torch.ones(B, T - at - n)]
        policy = torch.cat(parts, dim=1)
        text_masks = []
        text_logp = F.log_softmax(self.output_text_score_predictor(x), dim=-1)
        text_keep = F.gumbel_softmax(text_logp, tau=tau, hard=True)[..., 0]  # [B, T]
        rows = []
        for b, span in enumerate(long_spans or [None] * B):
            row = torch.ones(T)
            if span is not None and span[1] - span[0] >= SPARSE["output_text_len_for_training"]:
                start, end = span[0] + n - 1, span[1] + n - 1  # ids index → embedding index
                row = torch.cat([torch.ones(start), text_keep[b, start:end], torch.ones(T - end)])
                text_masks.append(text_keep[b, start:end])
            rows.append(row)
        policy = policy * torch.stack(rows)
        return policy, {"image": image_keep, "text": text_masks}


class PatchHead(nn.Module):
    """Training-only head on the tower's selected features [B, N, W]: per patch, 24 coverage logits
    (colour x kind) and 25 centre logits (none, or the colour-kind whose box centre lies there)."""

    def __init__(self, width):
        super().__init__()
        self.cover = nn.Linear(width, 24)
        self.centre = nn.Linear(width, 25)

    def forward(self, features):
        return self.cover(features), self.centre(features)


COLOUR_ORDER = ["red", "green", "blue", "yellow", "purple", "orange"]
KIND_ORDER = ["circle", "square", "triangle", "star"]


def patch_targets(scene, image_size, patch_size):
    """Coverage [N, 24] (a pair covers >= 8% of the patch) and centre class [N] of one scene."""
    grid = image_size // patch_size
    scale = image_size / SCENE_SIZE
    label = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(label)
    classes = []
    for i, shape in enumerate(scene["shapes"]):
        classes.append(COLOUR_ORDER.index(shape["color"]) * 4 + KIND_ORDER.index(shape["kind"]))
        if shape["kind"] == "circle":
            r = shape["size"] / 2
            draw.ellipse([(shape["cx"] - r) * scale, (shape["cy"] - r) * scale,
                          (shape["cx"] + r) * scale - 1, (shape["cy"] + r) * scale - 1], fill=i + 1)
        else:
            draw.polygon([(x * scale, y * scale) for x, y in shape_polygon(shape)], fill=i + 1)
    cells = np.asarray(label).reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3)
    cells = cells.reshape(grid * grid, patch_size * patch_size)
    cover = np.zeros((grid * grid, 24), dtype=np.float32)
    centre = np.zeros(grid * grid, dtype=np.int64)
    for i, shape in enumerate(scene["shapes"]):
        cover[:, classes[i]] = np.maximum(cover[:, classes[i]], (cells == i + 1).mean(axis=1) >= 0.08)
        col = min(grid - 1, int(shape["cx"] * scale // patch_size))
        row = min(grid - 1, int(shape["cy"] * scale // patch_size))
        centre[row * grid + col] = classes[i] + 1
    return torch.from_numpy(cover), torch.from_numpy(centre)


def patch_loss(head, features, targets):
    cover_logits, centre_logits = head(features)
    cover, centre = targets
    return F.binary_cross_entropy_with_logits(cover_logits, cover) + \
        F.cross_entropy(centre_logits.reshape(-1, 25), centre.reshape(-1))


# ----------------------------------------------------------------------------- data

def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def collate(sequences, rng, image_size, augment=True):
    width = max(len(s["ids"]) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, :len(s["ids"])] = torch.tensor(s["ids"])
        labels[b, :len(s["labels"])] = torch.tensor(s["labels"])
    if augment:
        pixels = torch.stack([augmented_pixels(s["scene"], rng, image_size) for s in sequences])
    else:
        pixels = torch.stack([preprocess(draw_scene(s["scene"]), image_size) for s in sequences])
    targets = [patch_targets(s["scene"], image_size, VISION["patch_size"]) for s in sequences]
    targets = (torch.stack([t[0] for t in targets]), torch.stack([t[1] for t in targets]))
    return ids, labels, pixels, [s["longSpan"] for s in sequences], targets


def answer_loss(model, hidden, ids, labels):
    """Cross-entropy of the next token at answer positions only (lm_head on those rows)."""
    n = model.num_image_tokens
    # Embedding index of ids index j: j for j < image, j + n - 1 after it. Shift: hidden[t] predicts t+1.
    at = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    target_b, target_j = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    source_j = target_j  # ids index of the predicting token
    source_t = torch.where(source_j < at, source_j, source_j + n - 1)
    logits = model.lm_head(hidden[target_b, source_t])
    return F.cross_entropy(logits, labels[target_b, target_j + 1])


def mask_loss(masks):
    image = ((SPARSE["vision_keep_rate"] - masks["image"].mean(dim=1)) ** 2).mean()
    if masks["text"]:
        ratios = torch.stack([m.mean() for m in masks["text"]])
        text = ((SPARSE["output_text_keep_rate"] - ratios) ** 2).mean()
    else:
        text = torch.zeros(())
    return image, text


def cosine_lr(step, total, peak, warmup):
    if step < warmup:
        return peak * max(step, 0.002) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ----------------------------------------------------------------------------- training

def run_stage(model, head, data, args, *, stage, steps, log):
    """One stage. Batches hold only descriptions or only short-question sequences (less padding)."""
    dynamic = stage == 2
    pools = [[s for s in data if s["longSpan"] is not None], [s for s in data if s["longSpan"] is None]]
    predictors = list(model.image_score_predictor.parameters()) + list(model.output_text_score_predictor.parameters())
    predictor_ids = {id(p) for p in predictors}
    base = [p for p in model.parameters() if id(p) not in predictor_ids]
    base += list(head.parameters())
    groups = [{"params": base, "lr": args.lr1 if not dynamic else args.lr2, "peak": args.lr1 if not dynamic else args.lr2}]
    if dynamic:
        groups.append({"params": predictors, "lr": args.predictor_lr, "peak": args.predictor_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.98))
    rng = random.Random(args.seed + stage)
    start = time.time()
    budget = args.budget[stage - 1] if args.budget else None
    for step in range(steps):
        # Progress through the stage: by steps, or by time when the stage has a time budget.
        progress = step / steps if budget is None else min(1.0, (time.time() - start) / budget)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(progress, 1.0, group["peak"], 0.03)
        tau = args.tau_start * (args.tau_end / args.tau_start) ** progress
        pool = pools[0] if rng.random() < len(pools[0]) / len(data) else pools[1]
        batch = [pool[rng.randrange(len(pool))] for _ in range(args.batch)]
        ids, labels, pixels, spans, targets = collate(batch, rng, VISION["image_size"])
        hidden, masks = model(ids, pixels, long_spans=spans, tau=tau, dynamic=dynamic)
        loss = answer_loss(model, hidden, ids, labels)
        aux = patch_loss(head, model.patch_features, targets)
        total = loss + args.patch_loss_weight * aux
        extra = ""
        if dynamic:
            image_l, text_l = mask_loss(masks)
            total = total + SPARSE["mask_loss_weight"] * (image_l + text_l)
            text_rate = torch.cat(masks["text"]).mean().item() if masks["text"] else float("nan")
            extra = f" keep img {masks['image'].mean().item():.3f} text {text_rate:.3f} tau {tau:.3f}"
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 99:
            torch.save(model.state_dict(), os.path.join(args.out, f"latest{stage}.pt"))
        if step % 500 == 499 and not dynamic:
            model.eval()
            log("stage 1 step %d val accuracy (dense): %.3f of %d" % (step, *val_accuracy(model, args.val_items, False, 60)))
            model.train()
        if step % 20 == 0 or step == steps - 1:
            elapsed = time.time() - start
            log(f"stage {stage} step {step}/{steps} loss {loss.item():.4f} patch {aux.item():.4f}{extra} ({elapsed:.0f}s)")
        if budget is not None and time.time() - start > budget:
            log(f"stage {stage}: time budget reached at step {step}")
            break


# ----------------------------------------------------------------------------- inference (checks)

def keep_rows(model, ids, pixels):
    """Inference rule of Dynamic-LLaVA prefill: top floor(N r_I) image tokens by log_softmax[:,0]."""
    x, at = model.embed(ids, pixels)
    B, T, _ = x.shape
    cos, sin = rope_tables(torch.arange(T), TEXT["hidden_size"] // TEXT["num_attention_heads"])
    causal = torch.tril(torch.ones(T, T))
    for layer in model.layers[:SPARSE["sparse_layer"]]:
        x = layer(x, cos, sin, causal)
    n = model.num_image_tokens
    scores = F.log_softmax(model.image_score_predictor(x[:, at:at + n]), dim=-1)[..., 0]
    k = int(n * SPARSE["vision_keep_rate"])
    kept = scores.topk(k, dim=1).indices.sort(dim=1).values
    rows = torch.ones(B, T)
    rows[:, at:at + n] = 0
    for b in range(B):
        rows[b, at + kept[b]] = 1
    return rows, kept


@torch.no_grad()
def last_logits(model, ids, pixels, dynamic):
    rows = keep_rows(model, ids, pixels)[0] if dynamic else None
    hidden, _ = model(ids, pixels, hard_keep=rows)
    return model.lm_head(hidden[:, -1])


@torch.no_grad()
def greedy_short(model, ids, pixels, dynamic, max_new=6):
    """Greedy answer ids (no KV cache; the prompt's image pruned as at inference)."""
    out = []
    for _ in range(max_new):
        token = int(last_logits(model, ids, pixels, dynamic).argmax(-1)[0])
        if token == 2:
            break
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def val_accuracy(model, val, dynamic, limit):
    """Exact match of greedy short answers on single-turn short validation sequences."""
    correct = total = 0
    for s in val:
        if s["longSpan"] is not None:
            continue
        first_answer = next(j for j, l in enumerate(s["labels"]) if l != -100)
        end = s["labels"].index(2, first_answer)
        ids = torch.tensor([s["ids"][:first_answer]])
        pixels = preprocess(draw_scene(s["scene"]), VISION["image_size"])[None]
        correct += int(greedy_short(model, ids, pixels, dynamic) == s["labels"][first_answer:end])
        total += 1
        if total >= limit:
            break
    return correct / max(1, total), total


# ----------------------------------------------------------------------------- export

def safetensors_bytes(tensors):
    header, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        data = tensor.detach().to(torch.float16).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F16", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def export(model, out, tokenizer_path):
    os.makedirs(os.path.join(out, "clip"), exist_ok=True)
    state = model.state_dict()
    llm, tower = {}, {}
    for name, tensor in state.items():
        if name.startswith("vision."):
            rest = name[len("vision."):]
            rest = rest.replace("patch_embedding", "embeddings.patch_embedding") \
                .replace("class_embedding", "embeddings.class_embedding") \
                .replace("position_embedding", "embeddings.position_embedding")
            if rest.startswith("layers."):
                i, tail = rest[len("layers."):].split(".", 1)
                tail = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                        "out_proj": "self_attn.out_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}.get(
                    tail.split(".")[0], tail.split(".")[0]) + "." + tail.split(".", 1)[1]
                rest = f"encoder.layers.{i}.{tail}"
            tower["vision_model." + rest] = tensor
        elif name.startswith("layers."):
            i, tail = name[len("layers."):].split(".", 1)
            head = tail.split(".")[0]
            prefix = "self_attn." if head in ("q_proj", "k_proj", "v_proj", "o_proj") else \
                "mlp." if head in ("gate_proj", "up_proj", "down_proj") else ""
            llm[f"model.layers.{i}.{prefix}{tail}"] = tensor
        elif name == "lm_head.weight":
            llm[name] = tensor
        else:
            llm["model." + name] = tensor
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(safetensors_bytes(llm))
    with open(os.path.join(out, "clip", "model.safetensors"), "wb") as f:
        f.write(safetensors_bytes(tower))
    with open(os.path.join(out, "clip", "config.json"), "w") as f:
        json.dump({"model_type": "clip_vision_model", "hidden_size": VISION["hidden_size"],
                   "intermediate_size": VISION["intermediate_size"],
                   "num_attention_heads": VISION["num_attention_heads"],
                   "num_hidden_layers": VISION["num_hidden_layers"], "image_size": VISION["image_size"],
                   "patch_size": VISION["patch_size"], "num_channels": 3, "hidden_act": "quick_gelu",
                   "layer_norm_eps": 1e-5}, f, indent=2)
    config = {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
        "hidden_size": TEXT["hidden_size"], "intermediate_size": TEXT["intermediate_size"],
        "num_attention_heads": TEXT["num_attention_heads"], "num_key_value_heads": TEXT["num_attention_heads"],
        "num_hidden_layers": TEXT["num_hidden_layers"], "vocab_size": TEXT["vocab_size"],
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu",
        "tie_word_embeddings": False, "torch_dtype": "float16",
        "mm_vision_tower": "clip", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": VISION["hidden_size"],
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "sparse_config": {
            "d_model": SPARSE["d_model"], "nhead": SPARSE["nhead"], "dim_feedforward": SPARSE["dim_feedforward"],
            "num_layers": SPARSE["num_layers"], "sparse_layer": SPARSE["sparse_layer"],
            "vision_keep_rate": SPARSE["vision_keep_rate"], "output_text_keep_rate": SPARSE["output_text_keep_rate"],
            "output_text_len_for_training": SPARSE["output_text_len_for_training"],
            "mask_loss_weight": SPARSE["mask_loss_weight"],
            "use_vision_predictor": True, "use_text_predictor": True, "use_output_text_predictor": True,
            "use_instruct_predictor": False,
        },
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(tokenizer_path, "rb") as src, open(os.path.join(out, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())


def write_check(model, val, out, count=4):
    """Last-position logits of `count` validation prompts (F16-rounded weights), dense and dynamic."""
    items = []
    for s in val[:count]:
        first_answer = next(j for j, l in enumerate(s["labels"]) if l != -100)
        ids = torch.tensor([s["ids"][:first_answer]])
        image = draw_scene(s["scene"])
        png = os.path.join(out, f"check_{s['seed']}.png")
        image.save(png)
        pixels = preprocess(image, VISION["image_size"])[None]
        kept = keep_rows(model, ids, pixels)[1][0].tolist()
        items.append({"seed": s["seed"], "image": os.path.basename(png), "ids": ids[0].tolist(),
                      "visualKept": kept,
                      "dense": last_logits(model, ids, pixels, False)[0].tolist(),
                      "dynamic": last_logits(model, ids, pixels, True)[0].tolist()})
    with open(os.path.join(out, "check.json"), "w") as f:
        json.dump(items, f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="tools/train/out")
    parser.add_argument("--out", default="tools/train/out/model")
    parser.add_argument("--tokenizer", default=None, help="default: DATA/tokenizer.json")
    parser.add_argument("--steps1", type=int, default=100000)
    parser.add_argument("--steps2", type=int, default=100000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr1", type=float, default=2e-3)
    parser.add_argument("--lr2", type=float, default=8e-4)
    parser.add_argument("--predictor-lr", type=float, default=1e-3)
    parser.add_argument("--tau-start", type=float, default=1.0)
    parser.add_argument("--tau-end", type=float, default=0.1)
    parser.add_argument("--patch-loss-weight", type=float, default=1.0)
    parser.add_argument("--budget", type=float, nargs=2, default=[3300, 1500], help="seconds per stage (the schedules follow elapsed time)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", default=None, help="state dict to start from (skips stage 1)")
    parser.add_argument("--export-from", default=None, help="only export this state dict and its checks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.tokenizer = args.tokenizer or os.path.join(args.data, "tokenizer.json")
    with open(args.tokenizer) as f:
        TEXT["vocab_size"] = max(json.load(f)["model"]["vocab"].values()) + 1
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    log_file = open(os.path.join(args.out, "train.log"), "a")

    def log(text):
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    train = load_jsonl(os.path.join(args.data, "train.jsonl"))
    val = load_jsonl(os.path.join(args.data, "val.jsonl"))
    model = TinyLlava()
    head = PatchHead(VISION["hidden_size"])
    args.val_items = val
    log(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M; train {len(train)} val {len(val)}")
    started = time.time()
    if args.export_from:
        model.load_state_dict(torch.load(args.export_from))
        finish(model, val, args, log, limit=20)
        return
    if args.resume:
        model.load_state_dict(torch.load(args.resume))
    else:
        run_stage(model, head, train, args, stage=1, steps=args.steps1, log=log)
        torch.save(model.state_dict(), os.path.join(args.out, "stage1.pt"))
        model.eval()
        log("stage 1 val accuracy (dense): %.3f of %d" % val_accuracy(model, val, False, 60))
        model.train()
    stage1_done = time.time()
    run_stage(model, head, train, args, stage=2, steps=args.steps2, log=log)
    torch.save(model.state_dict(), os.path.join(args.out, "stage2.pt"))
    finish(model, val, args, log, limit=60)
    log(f"time: stage 1 {stage1_done - started:.0f}s, stage 2 {time.time() - stage1_done:.0f}s")


def finish(model, val, args, log, limit):
    """F16 rounding, validation accuracy, export and the logits check file."""
    model.eval()
    with torch.no_grad():  # round to F16 so that the checks see the exported weights
        for p in model.parameters():
            p.copy_(p.half().float())
    export(model, args.out, args.tokenizer)
    write_check(model, val, args.out)
    log("val accuracy (F16 weights): dense %.3f of %d" % val_accuracy(model, val, False, limit))
    log("val accuracy (F16 weights): dynamic %.3f of %d" % val_accuracy(model, val, True, limit))


if __name__ == "__main__":
    sys.exit(main())

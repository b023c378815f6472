#!/usr/bin/env python3
"""Independent reference for the whole LLaVA / Dynamic-LLaVA forward, in PyTorch (float64).

Written from the published definitions (HF LLaMA and CLIP, LLaVA-1.5's mlp2x_gelu projector, the
Dynamic-LLaVA predictors and inference rules, FastV) and sharing no code with the TypeScript
runtime: it reads the fixture checkpoints' safetensors and config.json itself, and decodes greedily
under the dense, FastV and dynamic policies, with and without KV cache. It writes the goldens the
tests compare both backends with:

  tests/fixtures/reference/golden.json   cases, tokens, kept image indices, admissions, KV rows,
                                         per-step log-probabilities and every decision's margin
  tests/fixtures/reference/<fixture>.f32 last-position prefill logits per policy (little-endian f32)

  /usr/bin/python3 tools/reference/forward.py [--fixtures tests/fixtures/out] [--out tests/fixtures/reference]

The fixtures are deterministic (written from seeds by `deno task fixtures`); golden.json records the
SHA-256 of every weight file it read so a stale golden is detected rather than silently compared.
"""
import argparse
import base64
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # one summation order: the goldens reproduce byte for byte

IMAGE_MARKER = -200
NEW_TOKENS = 64
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# Decisions closer than this are near-ties that float32 summation order may flip; comparisons stop
# before the first one (the margin is recorded). Logit-like units / attention probabilities.
NEAR_TIE = {"logit": 2e-4, "prob": 1e-6}

FIXTURES = {
    "llama-f32": "F32", "llama-f16-gqa": "F16", "llama-bf16-sharded": "BF16", "llava-f32-dyn": "F32",
    "llava-f16-gqa-dyn-hub": "F16", "llava-bf16": "BF16", "llava-hf-f32": "F32",
}
# "A chat between a curious human and an artificial intelligence assistant. USER: <image>\n
# Describe the picture in detail. ASSISTANT:" as LLaMA-2 ids (any ids would do: no tokenizer here).
TEXT_BEFORE = [1, 319, 13563, 1546, 263, 12758, 5199, 322, 385, 23116, 21082, 20255, 29889, 3148, 1001, 29901]
TEXT_AFTER = [13, 4002, 29581, 278, 7623, 297, 9493, 29889, 319, 1799, 9047, 13566, 29901]


# ---------------------------------------------------------------- checkpoint reading

def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    body = raw[8 + header_len:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        chunk = body[start:end]
        if info["dtype"] == "F32":
            arr = np.frombuffer(chunk, dtype="<f4").astype(np.float64)
        elif info["dtype"] == "F16":
            arr = np.frombuffer(chunk, dtype="<f2").astype(np.float64)
        elif info["dtype"] == "BF16":
            bits = np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32).astype(np.float64)
        else:
            raise ValueError(f"{path}: dtype {info['dtype']}")
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out, hashlib.sha256(raw).hexdigest()


def read_folder(folder, hashes, root):
    tensors = {}
    index = os.path.join(folder, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else [
        "model.safetensors"]
    for name in files:
        path = os.path.join(folder, name)
        t, digest = read_safetensors(path)
        hashes[os.path.relpath(path, root)] = digest
        tensors.update(t)
    return tensors


def load_fixture(root, name):
    folder = os.path.join(root, name)
    config = json.load(open(os.path.join(folder, "config.json")))
    hashes = {}
    w = read_folder(folder, hashes, root)
    model = {"hashes": hashes}
    if config["model_type"] == "llava":
        text = config["text_config"]
        lm = {k[len("language_model.model."):]: v for k, v in w.items() if k.startswith("language_model.model.")}
        lm["lm_head.weight"] = w["language_model.lm_head.weight"]
        tower = {k[len("vision_tower."):]: v for k, v in w.items() if k.startswith("vision_tower.")}
        model["vision"] = config["vision_config"]
        model["tower"] = tower
        model["projector"] = [w["multi_modal_projector.linear_1.weight"], w["multi_modal_projector.linear_1.bias"],
                              w["multi_modal_projector.linear_2.weight"], w["multi_modal_projector.linear_2.bias"]]
        model["select_layer"] = config["vision_feature_layer"]
    else:
        text = config
        lm = {k[len("model."):]: v for k, v in w.items() if k.startswith("model.")}
        lm["lm_head.weight"] = w["lm_head.weight"]
        if config["model_type"] == "llava_llama":
            ref = config["mm_vision_tower"]
            tower_dir = os.path.join(folder, ref)
            if not os.path.isdir(tower_dir):  # a hub id in the fixture's own HF cache
                org, repo = ref.split("/")
                snaps = os.path.join(folder, "hf", "hub", f"models--{org}--{repo}", "snapshots")
                tower_dir = os.path.join(snaps, sorted(os.listdir(snaps))[0])
            model["vision"] = json.load(open(os.path.join(tower_dir, "config.json")))
            model["tower"] = read_folder(tower_dir, hashes, root)
            model["projector"] = [w["model.mm_projector.0.weight"], w["model.mm_projector.0.bias"],
                                  w["model.mm_projector.2.weight"], w["model.mm_projector.2.bias"]]
            model["select_layer"] = config["mm_vision_select_layer"]
            if "sparse_config" in config:
                model["sparse"] = config["sparse_config"]
                model["vision_predictor"] = {k[len("model.image_score_predictor."):]: v for k, v in w.items()
                                             if k.startswith("model.image_score_predictor.")}
                model["text_predictor"] = {k[len("model.output_text_score_predictor."):]: v for k, v in w.items()
                                           if k.startswith("model.output_text_score_predictor.")}
    model["text"] = text
    model["lm"] = lm
    return model


# ---------------------------------------------------------------- CLIP tower + projector

def layer_norm(x, w, b, eps=1e-5):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def gelu(x):
    return torch.nn.functional.gelu(x)  # erf form


def clip_features(model, pixels):
    """pixels [3, S, S] → projected image embeddings [N, C] (hidden state of the selected layer, CLS dropped)."""
    v, t = model["vision"], model["tower"]
    p = "vision_model."
    patch = v["patch_size"]
    x = torch.nn.functional.conv2d(pixels[None], t[p + "embeddings.patch_embedding.weight"], stride=patch)
    x = x.flatten(2).transpose(1, 2)[0]  # [N, Cv]
    x = torch.cat([t[p + "embeddings.class_embedding"][None], x], 0)
    x = x + t[p + "embeddings.position_embedding.weight"]
    x = layer_norm(x, t[p + "pre_layrnorm.weight"], t[p + "pre_layrnorm.bias"])
    states = [x]
    heads = v["num_attention_heads"]
    for i in range(v["num_hidden_layers"]):
        q = f"{p}encoder.layers.{i}."
        h = layer_norm(x, t[q + "layer_norm1.weight"], t[q + "layer_norm1.bias"])
        n, c = h.shape
        d = c // heads
        lin = lambda name, y: y @ t[q + name + ".weight"].T + t[q + name + ".bias"]
        qs = (lin("self_attn.q_proj", h) * d ** -0.5).view(n, heads, d).transpose(0, 1)
        ks = lin("self_attn.k_proj", h).view(n, heads, d).transpose(0, 1)
        vs = lin("self_attn.v_proj", h).view(n, heads, d).transpose(0, 1)
        a = torch.softmax(qs @ ks.transpose(1, 2), -1) @ vs
        x = x + lin("self_attn.out_proj", a.transpose(0, 1).reshape(n, c))
        h = layer_norm(x, t[q + "layer_norm2.weight"], t[q + "layer_norm2.bias"])
        h = lin("mlp.fc1", h)
        h = h * torch.sigmoid(1.702 * h)  # quick_gelu
        x = x + lin("mlp.fc2", h)
        states.append(x)
    feats = states[model["select_layer"]][1:]
    w1, b1, w2, b2 = model["projector"]
    return gelu(feats @ w1.T + b1) @ w2.T + b2


def pixels_of(image):
    """{width, height, data} uint8 RGB, already square at the tower's size → [3, S, S] normalised."""
    data = torch.tensor(list(image["data"]), dtype=torch.float64).view(image["height"], image["width"], 3)
    x = data / 255.0
    x = (x - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    return x.permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------- predictors (Dynamic-LLaVA)

def vision_predictor(model, x):
    """x [N, C] → logits [N, 2]."""
    w, sp = model["vision_predictor"], model["sparse"]
    lin = lambda name, y: y @ w[name + ".weight"].T + (w[name + ".bias"] if name + ".bias" in w else 0)
    h = gelu(lin("down_mlp.1", layer_norm(x, w["down_mlp.0.weight"], w["down_mlp.0.bias"])))
    heads = sp["nhead"]
    for i in range(sp["num_layers"]):
        b = f"transformer.{i}."
        n, d = h.shape
        hd = d // heads
        y = layer_norm(h, w[b + "norm1.weight"], w[b + "norm1.bias"])
        qkv = lin(b + "attn.qkv", y).view(n, 3, heads, hd).permute(1, 2, 0, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax((q * hd ** -0.5) @ k.transpose(1, 2), -1) @ v
        h = h + lin(b + "attn.proj", a.transpose(0, 1).reshape(n, d))
        y = layer_norm(h, w[b + "norm2.weight"], w[b + "norm2.bias"])
        h = h + lin(b + "mlp.fc2", gelu(lin(b + "mlp.fc1", y)))
    half = h.shape[1] // 2
    local, glob = h[:, :half], h[:, half:].mean(0, keepdim=True).expand(h.shape[0], -1)
    h = torch.cat([local, glob], 1)
    h = gelu(lin("output_mlp.0", h))
    h = gelu(lin("output_mlp.2", h))
    return lin("output_mlp.4", h)


def text_predictor(model, x):
    """x [n, C] → logits [n, 2]."""
    w = model["text_predictor"]
    lin = lambda name, y: y @ w[name + ".weight"].T + w[name + ".bias"]
    h = layer_norm(x, w["output_mlp.0.weight"], w["output_mlp.0.bias"])
    h = gelu(lin("output_mlp.1", h))
    h = gelu(lin("output_mlp.3", h))
    h = gelu(lin("output_mlp.5", h))
    return lin("output_mlp.7", h)


# ---------------------------------------------------------------- LLaMA decoder

def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, positions, theta):
    """x [heads, n, d] rotated as HF LLaMA (rotate_half over the two halves of each head)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    freqs = torch.tensor(positions, dtype=torch.float64)[:, None] * inv[None]
    emb = torch.cat([freqs, freqs], -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], -1) * emb.sin()


class Cache:
    """One layer's K/V rows [kvHeads, rows, d] and their original positions."""

    def __init__(self):
        self.k = None
        self.v = None
        self.positions = []

    def rows(self):
        return len(self.positions)


def decoder_layer(model, l, x, positions, cache, store=True):
    """Rows x [m, C] at `positions` attend to the cache then causally to each other. Returns
    (x, last row's attention probabilities over cache+rows averaged over heads). Appends K/V when `store`."""
    t, lm = model["text"], model["lm"]
    p = f"layers.{l}."
    heads, kv_heads = t["num_attention_heads"], t.get("num_key_value_heads", t["num_attention_heads"])
    m, c = x.shape
    d = c // heads
    h = rms_norm(x, lm[p + "input_layernorm.weight"], t["rms_norm_eps"])
    q = (h @ lm[p + "self_attn.q_proj.weight"].T).view(m, heads, d).transpose(0, 1)
    k = (h @ lm[p + "self_attn.k_proj.weight"].T).view(m, kv_heads, d).transpose(0, 1)
    v = (h @ lm[p + "self_attn.v_proj.weight"].T).view(m, kv_heads, d).transpose(0, 1)
    q, k = rope(q, positions, t["rope_theta"]), rope(k, positions, t["rope_theta"])
    past = cache.rows()
    keys = k if cache.k is None else torch.cat([cache.k, k], 1)
    vals = v if cache.v is None else torch.cat([cache.v, v], 1)
    group = heads // kv_heads
    keys_h, vals_h = keys.repeat_interleave(group, 0), vals.repeat_interleave(group, 0)
    scores = q @ keys_h.transpose(1, 2) / math.sqrt(d)  # [heads, m, past+m]
    mask = torch.ones(m, past + m, dtype=torch.bool).tril(past)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, -1)
    a = (probs @ vals_h).transpose(0, 1).reshape(m, c)
    x = x + a @ lm[p + "self_attn.o_proj.weight"].T
    h = rms_norm(x, lm[p + "post_attention_layernorm.weight"], t["rms_norm_eps"])
    gate, up = h @ lm[p + "mlp.gate_proj.weight"].T, h @ lm[p + "mlp.up_proj.weight"].T
    x = x + (torch.nn.functional.silu(gate) * up) @ lm[p + "mlp.down_proj.weight"].T
    if store:
        cache.k, cache.v = keys, vals
        cache.positions = cache.positions + list(positions)
    return x, probs[:, -1, :].mean(0)


def final_logits(model, x_last):
    t, lm = model["text"], model["lm"]
    return rms_norm(x_last, lm["norm.weight"], t["rms_norm_eps"]) @ lm["lm_head.weight"].T


def top_k_margin(values, k):
    """Indices of the k largest values, ascending (ties: lower index first), and the gap between the
    k-th and (k+1)-th largest (inf when nothing is left out)."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    gap = float(values[order[k - 1]] - values[order[k]]) if k < len(values) else math.inf
    return sorted(order[:k]), gap


def token_margin(logits):
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


# ---------------------------------------------------------------- policies and decoding

def plan_of(model, policy):
    layers = model["text"]["num_hidden_layers"]
    if policy == "dense":
        return {"prune": None, "admit": None}
    if policy == "fastv":
        return {"prune": 2, "admit": None, "fastv_keep_rate": 0.5}
    if policy == "dynamic":
        sp = model["sparse"]
        return {"prune": sp["sparse_layer"], "admit": sp["sparse_layer"], "keep_rate": sp["vision_keep_rate"]}
    raise ValueError(policy)


def keep_count(total, rate):
    return 0 if total == 0 else max(1, math.floor(total * rate))


def prompt_rows(model, ids, image):
    """Embeddings [P, C], kinds per row, image features expanded at the marker."""
    emb = model["lm"]["embed_tokens.weight"]
    rows, kinds = [], []
    for i in ids:
        if i == IMAGE_MARKER:
            feats = clip_features(model, pixels_of(image))
            rows.append(feats)
            kinds += ["image"] * feats.shape[0]
        else:
            rows.append(emb[i][None])
            kinds.append("text")
    return torch.cat(rows, 0), kinds


def select(model, plan, x, kinds, last_probs, decisions):
    """Rows kept at the prune layer (indices into x), the kept image indices, the kept output indices."""
    image = [i for i, k in enumerate(kinds) if k == "image"]
    output = [i for i, k in enumerate(kinds) if k == "output"]
    keep_image, keep_out = image, output
    if plan.get("fastv_keep_rate") is not None and image:
        att = [float(last_probs[i]) for i in image]
        kept, gap = top_k_margin(att, keep_count(len(image), 1 - plan["fastv_keep_rate"]))
        decisions.append(("prob", gap))
        keep_image = [image[i] for i in kept]
    if plan.get("keep_rate") is not None and image:
        scores = torch.log_softmax(vision_predictor(model, x[image]), -1)[:, 0].tolist()
        kept, gap = top_k_margin(scores, keep_count(len(image), plan["keep_rate"]))
        decisions.append(("logit", gap))
        keep_image = [image[i] for i in kept]
    if plan.get("admit") is not None and len(output) > 1:
        cand = output[:-1]
        logits = text_predictor(model, x[cand])
        l0 = logits[:, 0].tolist()
        n = int((logits[:, 0] > logits[:, 1]).sum())
        decisions.append(("logit", float((logits[:, 0] - logits[:, 1]).abs().min())))
        if n > 0:
            kept, gap = top_k_margin(l0, n)
            decisions.append(("logit", gap))
        else:
            kept = []
        keep_out = [cand[i] for i in kept] + [output[-1]]
    elif output:
        keep_out = output
    keep = sorted(set(i for i, k in enumerate(kinds) if k == "text") | set(keep_image) | set(keep_out))
    image_kept = [image.index(i) for i in keep_image] if (plan["prune"] is not None and image) else None
    out_kept = [output.index(i) for i in keep_out]
    return keep, image_kept, out_kept


def full_forward(model, plan, x, kinds, positions, caches):
    """One pass over all rows with pruning at the plan's layer. Returns (last row, kept image, kept outputs, decisions)."""
    layers = model["text"]["num_hidden_layers"]
    image_kept, out_kept, decisions, last_probs = None, None, [], None
    for l in range(layers):
        if plan["prune"] is not None and l == plan["prune"]:
            keep, image_kept, out_kept = select(model, plan, x, kinds, last_probs, decisions)
            x = x[keep]
            kinds = [kinds[i] for i in keep]
            positions = [positions[i] for i in keep]
        x, last_probs = decoder_layer(model, l, x, positions, caches[l])
    return x[-1], image_kept, out_kept, decisions


def run_kv(model, policy, ids, image, new_tokens):
    plan = plan_of(model, policy)
    layers = model["text"]["num_hidden_layers"]
    x, kinds = prompt_rows(model, ids, image)
    prompt_len = x.shape[0]
    caches = [Cache() for _ in range(layers)]
    last, image_kept, _, decisions = full_forward(model, plan, x, kinds, list(range(prompt_len)), caches)
    logits = final_logits(model, last)
    prefill_logits = logits.clone()
    steps = [{"decisions": decisions}]
    tokens, log_probs, admitted = [], [], []
    while True:
        token = int(torch.argmax(logits))
        tokens.append(token)
        log_probs.append(float(torch.log_softmax(logits, -1)[token]))
        steps[-1]["decisions"].append(("logit", token_margin(logits)))
        if len(tokens) == new_tokens:
            break
        pos = prompt_len + len(tokens) - 1
        h = model["lm"]["embed_tokens.weight"][token][None]
        admit, decisions = True, []
        for l in range(layers):
            if plan["admit"] is not None and l == plan["admit"]:
                tl = text_predictor(model, h)[0]
                admit = bool(tl[0] > tl[1])
                decisions.append(("logit", float((tl[0] - tl[1]).abs())))
            h, _ = decoder_layer(model, l, h, [pos], caches[l], store=l < (plan["admit"] or layers) or admit)
        admitted.append(admit)
        steps.append({"decisions": decisions})
        logits = final_logits(model, h[0])
    return {
        "tokens": tokens, "visualKept": image_kept, "admitted": admitted, "logProbs": log_probs,
        "rowsPerLayer": [c.rows() for c in caches], "steps": steps,
    }, prefill_logits


def run_no_cache(model, policy, ids, image, new_tokens):
    plan = plan_of(model, policy)
    layers = model["text"]["num_hidden_layers"]
    x0, kinds0 = prompt_rows(model, ids, image)
    emb = model["lm"]["embed_tokens.weight"]
    tokens, log_probs, steps, first_kept, out_kept = [], [], [], None, []
    while len(tokens) < new_tokens:
        x = torch.cat([x0] + [emb[t][None] for t in tokens], 0)
        kinds = kinds0 + ["output"] * len(tokens)
        caches = [Cache() for _ in range(layers)]
        last, image_kept, out_kept, decisions = full_forward(model, plan, x, kinds, list(range(x.shape[0])), caches)
        if first_kept is None:
            first_kept = image_kept if image_kept is not None else "none"
        logits = final_logits(model, last)
        token = int(torch.argmax(logits))
        decisions.append(("logit", token_margin(logits)))
        steps.append({"decisions": decisions})
        log_probs.append(float(torch.log_softmax(logits, -1)[token]))
        tokens.append(token)
    fed = len(tokens) - 1
    kept = set(range(fed)) if out_kept is None else set(out_kept)  # nothing pruned: all kept
    admitted = [j == fed - 1 or j in kept for j in range(fed)]
    return {
        "tokens": tokens, "visualKept": None if first_kept == "none" else first_kept, "admitted": admitted,
        "logProbs": log_probs, "rowsPerLayer": None, "steps": steps,
    }


def trusted_prefix(steps, dtype):
    """Generated tokens (and fed-token decisions) that no near-tie precedes: step s's decisions come
    before token s. Returns (tokens trusted, smallest margin seen, step where it stops or None)."""
    tie = NEAR_TIE
    for s, step in enumerate(steps):
        for unit, margin in step["decisions"]:
            if margin < tie[unit]:
                return s, {"step": s, "unit": unit, "margin": margin}
    return len(steps), None


def image_pattern(size):
    data = bytearray(size * size * 3)
    for i in range(len(data)):
        data[i] = (i * 37 + (i % 7) * 11) % 256
    return {"width": size, "height": size, "data": bytes(data)}


def rounded(value):
    """Floats to 12 significant digits (far below every tolerance), so the JSON is stable."""
    if isinstance(value, float):
        return value if math.isinf(value) else float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixtures", default="tests/fixtures/out")
    parser.add_argument("--out", default="tests/fixtures/reference")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    golden = {"newTokens": NEW_TOKENS, "nearTie": NEAR_TIE, "fixtures": {}}
    for name, dtype in FIXTURES.items():
        model = load_fixture(args.fixtures, name)
        has_vision = "vision" in model
        size = model["vision"]["image_size"] if has_vision else 0
        image = image_pattern(size) if has_vision else None
        ids = TEXT_BEFORE + ([IMAGE_MARKER] if has_vision else []) + TEXT_AFTER
        policies = ["dense"] + (["fastv"] if has_vision else []) + (["dynamic"] if "sparse" in model else [])
        entry = {"dtype": dtype, "sha256": model["hashes"], "inputIds": ids,
                 "image": {"width": size, "height": size, "data": base64.b64encode(image["data"]).decode()}
                 if image else None, "policies": policies, "runs": []}
        logits_blob = bytearray()
        for policy in policies:
            for kv in [True, False]:
                if kv:
                    run, prefill = run_kv(model, policy, ids, image, NEW_TOKENS)
                    logits_blob += prefill.numpy().astype("<f4").tobytes()
                else:
                    run = run_no_cache(model, policy, ids, image, NEW_TOKENS)
                trusted, tie = trusted_prefix(run["steps"], dtype)
                margins = [min(m for _, m in s["decisions"]) for s in run["steps"]]
                del run["steps"]
                run.update({"policy": policy, "kvCache": kv, "trustedTokens": trusted, "nearTie": tie,
                            "minTokenMargin": min(margins)})
                entry["runs"].append(run)
                print(f"{name} {policy} kv={kv}: trusted {trusted}/{NEW_TOKENS}"
                      f" kept={run['visualKept']} tie={tie}", file=sys.stderr)
        with open(os.path.join(args.out, f"{name}.f32"), "wb") as f:
            f.write(logits_blob)
        golden["fixtures"][name] = entry
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump(rounded(golden), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

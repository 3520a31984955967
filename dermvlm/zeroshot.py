"""Zero-shot use of an aligned image/text pair: prompt-ensemble classification (with a model
folder's fitted prototypes for the labels it has them for, dermvlm.prototypes), hierarchical
roll-up, MONET-style concept scores, retrieval, and linear probes on frozen features.

    zs = ZeroShot(model, tokenizer)
    probs = zs.classify(images, ["melanoma", "nevus"])           # (N, 2), DermLIP templates
    scores = zs.concept_scores(images, ["Scale", "Erythema"])     # (N, 2), MONET style
"""
import numpy as np
import torch
import torch.nn.functional as F

from dermvlm import vocab
from dermvlm.imaging import tower_chunks
from dermvlm.ontology import CONDITIONS

# DermLIP's prompt ensemble (its zero-shot evaluation code).
DERMLIP_TEMPLATES = (
    "This is a skin image of {c}", "This is a skin image of {c}.", "A skin image of {c}.",
    "An image of {c}, a skin condition.", "{c}, a skin disorder, is shown in this image.",
    "The skin lesion depicted is {c}.", "The skin cancer in this image is {c}.",
    "This image depicts {c}, a type of skin cancer.",
)
# MONET: target prompts against reference prompts without the concept.
MONET_TARGETS = ("This is skin image of {}", "This is dermatology image of {}",
                 "This is image of {}")
MONET_REFERENCES = ("This is skin image", "This is dermatology image", "This is image")
MONET_DERMOSCOPY_TARGETS = ("This is dermatoscopy of {}",)
MONET_DERMOSCOPY_REFERENCES = ("This is dermatoscopy",)

# Synonyms per SkinCon concept (MONET averages over several wordings of each concept).
# attribute prompts (the SynthDerm attribute evaluation and the app's findings)
ATTRIBUTE_TEMPLATES = ("A skin image of a {c} lesion.", "This is a skin image of {c}.",
                       "A skin lesion that is {c}.")
# singular only: "{c}s" wrote "patchs", "bullas", "comedos"
LESION_TYPE_TEMPLATES = ("A skin image of a {c}.", "This is a skin image showing a {c}.",
                         "A {c} on the skin.")
MODALITY_WORDS = {"clinical": "clinical photograph", "dermoscopic": "dermoscopic image"}
MODALITY_TEMPLATES = ("A {c} of the skin.", "This is a {c}.")
SKINCON_SYNONYMS = {
    "Vesicle": ("vesicle", "blister", "small fluid-filled blister"),
    "Papule": ("papule", "small raised bump"), "Macule": ("macule", "flat spot"),
    "Plaque": ("plaque", "raised plaque"), "Abscess": ("abscess", "pus collection"),
    "Pustule": ("pustule", "pus-filled bump"), "Bulla": ("bulla", "large blister"),
    "Patch": ("patch", "large flat patch"), "Nodule": ("nodule", "firm nodule"),
    "Ulcer": ("ulcer", "ulceration"), "Crust": ("crust", "crusting", "scab"),
    "Erosion": ("erosion", "eroded skin"), "Excoriation": ("excoriation", "scratch marks"),
    "Atrophy": ("atrophy", "thin atrophic skin"), "Exudate": ("exudate", "oozing"),
    "Purpura/Petechiae": ("purpura", "petechiae"), "Fissure": ("fissure", "skin crack"),
    "Induration": ("induration", "hardened skin"), "Xerosis": ("xerosis", "dry skin"),
    "Telangiectasia": ("telangiectasia", "dilated blood vessels"),
    "Scale": ("scale", "scaly skin", "silvery scale"), "Scar": ("scar", "scarring"),
    "Friable": ("friable", "easily bleeding"), "Sclerosis": ("sclerosis", "sclerotic skin"),
    "Pedunculated": ("pedunculated", "on a stalk"),
    "Exophytic/Fungating": ("exophytic", "fungating mass"),
    "Warty/Papillomatous": ("warty", "papillomatous", "verrucous"),
    "Dome-shaped": ("dome-shaped", "dome"), "Flat topped": ("flat topped", "flat-topped"),
    "Brown(Hyperpigmentation)": ("brown", "hyperpigmentation", "hyperpigmented"),
    "Translucent": ("translucent", "pearly"),
    "White(Hypopigmentation)": ("white", "hypopigmentation", "depigmented"),
    "Purple": ("purple", "violaceous"), "Yellow": ("yellow", "yellowish"),
    "Black": ("black", "jet-black"), "Erythema": ("erythema", "red", "erythematous"),
    "Comedo": ("comedo", "blackhead"), "Lichenification": ("lichenification",
                                                           "thickened skin"),
    "Blue": ("blue", "bluish"), "Umbilicated": ("umbilicated", "central dimple"),
    "Poikiloderma": ("poikiloderma",), "Salmon": ("salmon", "salmon-pink"),
    "Wheal": ("wheal", "hive"), "Acuminate": ("acuminate", "pointed"),
    "Burrow": ("burrow", "linear burrow"), "Gray": ("gray", "grey"),
    "Pigmented": ("pigmented", "pigmentation"), "Cyst": ("cyst", "cystic lesion"),
}


def trim_padding(model, tokens):
    """(B, L) token ids -> (B, L') without the trailing columns that are padding in every row,
    when the model's text tower is a HuggingFace one (it masks padding, so embeddings are
    unchanged and a 12-token prompt costs 12 positions instead of the context length, 77).
    open_clip's own text transformer keeps its length: its causal mask has a fixed size."""
    from open_clip.hf_model import HFTextEncoder
    text = getattr(model, "text", None)
    if not isinstance(text, HFTextEncoder):
        return tokens
    used = (tokens != text.config.pad_token_id).any(0).nonzero()
    return tokens[:, :int(used.max()) + 1] if len(used) else tokens


class ZeroShot:
    """Encodes images and prompt ensembles with one model; text embeddings are cached."""

    def __init__(self, model, tokenizer, device="cpu", batch_size=64, prototypes=True):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device, self.batch_size = device, batch_size
        self._text_cache = {}          # prompt -> normalised embedding (D,)
        # {label: (D,)} fitted prototypes of a model folder (dermvlm.prototypes), or None
        self.prototypes = getattr(model, "dermvlm_prototypes", None) if prototypes else None
        # the judged modality they apply to (None: every image)
        self.prototypes_modality = getattr(model, "dermvlm_prototypes_modality", None)

    @torch.no_grad()
    def encode_images(self, images):
        """(N, D) normalised features from a (N, 3, H, W) tensor, in batches."""
        feats = [self.model.encode_image(part.to(self.device), normalize=True).float().cpu()
                 for part in tower_chunks(images, self.batch_size, self.device)]
        return torch.cat(feats) if feats else torch.empty(0)

    @torch.no_grad()
    def encode_texts(self, prompts):
        """(P, D) normalised features, each prompt encoded once per ZeroShot."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            tokens = trim_padding(self.model, self.tokenizer(chunk)).to(self.device)
            feats = self.model.encode_text(tokens, normalize=True).float().cpu()
            self._text_cache.update(zip(chunk, feats))
        return torch.stack([self._text_cache[p] for p in prompts])

    def classifier(self, labels, templates=DERMLIP_TEMPLATES, fitted=True):
        """(D, C) weights: a label's fitted prototype where the model folder has one, the
        prompts are DermLIP's (dermvlm.prototypes) and `fitted`, else the renormalised mean
        embedding of its templates."""
        if not labels:
            raise ValueError("empty label list: give at least two labels")
        weights = []
        fitted = self.prototypes if fitted and tuple(templates) == DERMLIP_TEMPLATES else None
        for label in labels:
            if fitted and label in fitted:
                weights.append(fitted[label])
                continue
            feats = self.encode_texts([t.format(c=label) for t in templates])
            weights.append(F.normalize(feats.mean(0), dim=-1))
        return torch.stack(weights, dim=1)

    def logits(self, image_features, labels, templates=DERMLIP_TEMPLATES):
        """(N, C) = 100 * image @ classifier, DermLIP's convention. Prototypes fitted for one
        modality score only the images judged that modality; the others, the text weights."""
        logits = 100.0 * image_features @ self.classifier(labels, templates)
        fitted = self.prototypes and tuple(templates) == DERMLIP_TEMPLATES and \
            any(label in self.prototypes for label in labels)
        if fitted and self.prototypes_modality and len(image_features):
            other = torch.tensor([m != self.prototypes_modality
                                  for m in zeroshot_modality(self, image_features)[0]])
            plain = 100.0 * image_features[other] @ self.classifier(labels, templates, False)
            logits[other] = plain
        return logits

    def concept_scores(self, image_features, concepts, dermoscopy=False, temperature=0.01,
                       synonyms=SKINCON_SYNONYMS, bias=0.0):
        """(N, K) MONET scores: softmax([mean target / T, mean reference / T])[0], averaged
        over the prompt templates; each concept averaged over its synonyms. `bias` shifts the
        margin first (Platt scaling, as dermvlm.trust fits it; 0 is MONET's score)."""
        margins = self.concept_margins(image_features, concepts, dermoscopy, synonyms)
        return torch.sigmoid((margins - bias) / temperature).mean(-1)  # pair softmax

    def concept_margins(self, image_features, concepts, dermoscopy=False,
                        synonyms=SKINCON_SYNONYMS):
        """(N, K, templates) mean target similarity minus reference similarity, per MONET
        template: what concept_scores turns into scores (and what a temperature is fitted
        on)."""
        targets = MONET_DERMOSCOPY_TARGETS if dermoscopy else MONET_TARGETS
        references = MONET_DERMOSCOPY_REFERENCES if dermoscopy else MONET_REFERENCES
        ref = self.encode_texts(list(references))                       # (T, D)
        ref_sim = image_features @ ref.T                                # (N, T)
        margins = []
        for concept in concepts:
            words = synonyms.get(concept, (concept,))
            per_template = [(image_features @ self.encode_texts(
                [template.format(w) for w in words]).T).mean(1) - ref_sim[:, t]
                for t, template in enumerate(targets)]                  # T x (N,)
            margins.append(torch.stack(per_template, dim=1))            # (N, T)
        return torch.stack(margins, dim=1)                              # (N, K, T)


def rollup(probs, labels, paths):
    """Probabilities of ancestor nodes: (N, C) leaf probs + {leaf: [top, ..., leaf]} ->
    {node: (N,) probability}, each node the sum over its leaves."""
    nodes = {}
    for j, label in enumerate(labels):
        for node in paths.get(label, [label]):
            nodes[node] = nodes.get(node, 0) + probs[:, j]
    return nodes


# the lesion types some condition presents with ('cyst' is in the vocabulary, in none)
FINDING_LESION_TYPES = tuple(t for t in vocab.LESION_TYPES
                             if any(c.lesion_types.get(t, 0) > 0 for c in CONDITIONS))


def zeroshot_modality(zs, image_features):
    """([modality], [its probability]) per image (N, D): dermoscopic or clinical, as the
    modality prompts rank them (softmax of DermLIP-scaled logits)."""
    probs = zs.logits(image_features, [MODALITY_WORDS[m] for m in vocab.MODALITIES],
                      MODALITY_TEMPLATES).softmax(1)
    confidence, best = probs.max(1)
    return [vocab.MODALITIES[i] for i in best.tolist()], [round(float(c), 4) for c in confidence]


def zeroshot_findings(zs, image_features, second_colour=0.5):
    """[{"lesion_type": str, "colours": [str], "modality": str, "modality_confidence": float}]
    per image (N, D): the most probable lesion type and modality (with its probability), and
    the most probable colour plus the runner-up when its probability is at least
    `second_colour` times the first's (brown and black)."""
    types = zs.logits(image_features, list(FINDING_LESION_TYPES), LESION_TYPE_TEMPLATES)
    colours = zs.logits(image_features, list(vocab.COLOURS), ATTRIBUTE_TEMPLATES).softmax(1)
    modalities, confidences = zeroshot_modality(zs, image_features)
    out = []
    for type_row, colour_row, modality, confidence in zip(types.argmax(1).tolist(), colours,
                                                          modalities, confidences):
        first, runner_up = colour_row.argsort(descending=True)[:2].tolist()
        keep = [first] + ([runner_up] if colour_row[runner_up] >= second_colour *
                          colour_row[first] else [])
        out.append({"lesion_type": FINDING_LESION_TYPES[type_row],
                    "colours": [vocab.COLOURS[j] for j in keep],
                    "modality": modality, "modality_confidence": confidence})
    return out


def topk_accuracy(logits, targets, ks=(1, 5)):
    """{k: fraction of rows whose target is in the top k}."""
    ranked = logits.argsort(dim=1, descending=True)
    hits = ranked == torch.as_tensor(targets)[:, None]
    return {k: float(hits[:, :k].any(1).float().mean()) for k in ks}


def retrieval_recall(image_features, text_features, ks=(1, 5, 10)):
    """Image->text and text->image Recall@K for paired rows (row i matches row i)."""
    sims = image_features @ text_features.T
    n = len(sims)
    target = torch.arange(n)
    out = {}
    for name, s in (("image_to_text", sims), ("text_to_image", sims.T)):
        rank = (s > s[target, target][:, None]).sum(1)      # 0 = best
        for k in ks:
            out[f"{name}_R@{k}"] = float((rank < k).float().mean()) if n else 0.0
    return out


def macro_auroc(scores, targets, n_classes):
    """One-vs-rest AUROC averaged over classes present with both outcomes (rank formula)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    aucs = [binary_auroc(scores[:, c], targets == c) for c in range(n_classes)]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if aucs else None


def binary_auroc(scores, positive):
    """AUROC by the Mann-Whitney statistic, ties averaged; None if one class is absent."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return None
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):   # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def linear_probe(train_x, train_y, test_x, n_classes, weight_decay=1e-3, steps=200, seed=0):
    """Multinomial logistic regression on frozen features (full-batch LBFGS); returns test
    logits (N_test, C)."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = (train_x - mean) / std
    y = torch.as_tensor(train_y)
    layer = torch.nn.Linear(x.shape[1], n_classes)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=steps,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(x), y) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    with torch.no_grad():
        return layer((test_x - mean) / std)


def few_shot_indices(labels, fraction, seed=0):
    """A stratified subset: `fraction` of each class's rows (at least one per class)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(rows))))
        chosen.extend(rng.choice(rows, size=k, replace=False).tolist())
    return sorted(chosen)

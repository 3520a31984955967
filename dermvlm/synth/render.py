"""Render a SynthDerm image from its attributes, with numpy and PIL only (no GPU).

Pipeline (all float32 RGB in [0, 1], shape (S, S, 3)):
  skin background (Fitzpatrick tone, mottling, pores, light) -> lesions painted one by one inside
  their bounding boxes (shape field -> alpha, colour, elevation shading, type-specific details,
  surface and secondary changes) -> dermoscopic aperture -> artefacts -> uint8.
Each lesion is a distance field d (0 at the centre, 1 at the border, wobbled for irregular
borders), so every attribute maps onto a few array operations and a 224 px image takes a few ms.
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dermvlm.ontology import CONDITIONS_BY_NAME
from dermvlm.synth.sample import MM_ACROSS_IMAGE, sample_seed
from dermvlm.vocab import RAISED_LESION_TYPES

SKIN_TONES = {  # Fitzpatrick type -> mean skin RGB (0-1)
    1: (0.96, 0.86, 0.79), 2: (0.91, 0.76, 0.65), 3: (0.80, 0.62, 0.48),
    4: (0.64, 0.45, 0.31), 5: (0.44, 0.29, 0.19), 6: (0.27, 0.17, 0.12),
}
COLOUR_RGB = {
    "red": (0.80, 0.16, 0.14), "pink": (0.93, 0.52, 0.55), "brown": (0.52, 0.31, 0.16),
    "dark brown": (0.30, 0.16, 0.08), "black": (0.08, 0.06, 0.06),
    "blue-grey": (0.38, 0.45, 0.58), "white": (0.97, 0.95, 0.92), "yellow": (0.93, 0.80, 0.35),
    "purple": (0.50, 0.22, 0.50), "skin-coloured": None,  # a slightly lighter, raised skin
}
TINTED_BY_SKIN = {"red", "pink", "purple"}   # vascular colours darken on darker skin
OPACITY = {"macule": 0.75, "patch": 0.7}      # raised lesions: 0.92
LIGHT = np.array([-0.6, -0.8], dtype=np.float32)  # light from the top left (x, y)


def _smooth_noise(rng, size, cells):
    """Value noise in [0, 1]: a (cells x cells) random grid upsampled bilinearly to size x size."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.array(Image.fromarray(grid, mode="F").resize((size, size), Image.BILINEAR))


def _skin(rng, size, fitzpatrick, modality):
    """Skin background (S, S, 3) and its mean tone (3,)."""
    tone = np.asarray(SKIN_TONES[fitzpatrick], dtype=np.float32) * np.float32(
        rng.uniform(0.95, 1.05))
    # One (S, S) brightness map (mottling, pores, light falloff), expanded to RGB once.
    shade = _smooth_noise(rng, size, 6)
    shade *= 0.08
    shade += rng.random((size, size), dtype=np.float32) * np.float32(0.05) + np.float32(0.935)
    if modality == "clinical":  # directional light falloff across the photo
        ramp = np.linspace(-0.07, 0.07, size, dtype=np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        shade += np.float32(np.cos(angle)) * ramp[None, :]
        shade += np.float32(np.sin(angle)) * ramp[:, None]
    return shade[..., None] * tone, tone


def _lesion_layout(rng, attrs, size):
    """Centres (n, 2) in pixels and radii (n,) for the lesions, following count/distribution."""
    n = attrs.n_lesions
    view = "clinical single" if attrs.modality == "clinical" and n == 1 else attrs.modality
    radius_px = attrs.size_mm / 2.0 * size / MM_ACROSS_IMAGE[view]
    radius_px = min(radius_px, 0.4 * size)
    if n > 1:  # many lesions of one size class still vary, and shrink to fit the field
        radius_px = min(radius_px, 0.5 * size / np.sqrt(n))
    radii = radius_px * rng.uniform(0.75, 1.25, size=n)
    c = size / 2.0
    margin = radius_px + 2
    if attrs.distribution == "solitary" or n == 1:
        centres = c + rng.uniform(-0.08, 0.08, size=(1, 2)) * size
    elif attrs.distribution == "grouped":
        hub = c + rng.uniform(-0.15, 0.15, size=2) * size
        centres = hub + rng.normal(0.0, 0.09 * size + radius_px, size=(n, 2))
    elif attrs.distribution == "linear":
        angle = rng.uniform(0, np.pi)
        steps = np.linspace(-0.38, 0.38, n) * size
        centres = c + steps[:, None] * np.array([np.cos(angle), np.sin(angle)])
        centres += rng.normal(0.0, 0.015 * size, size=(n, 2))
    elif attrs.distribution == "annular":
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
        ring = 0.28 * size
        centres = c + ring * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif attrs.distribution == "symmetric":
        half = (n + 1) // 2
        x_low = min(margin, 0.5 * c)
        left = np.stack([rng.uniform(x_low, max(c - radius_px, x_low + 1), half),
                         rng.uniform(margin, size - margin, half)], axis=1)
        right = left.copy()
        right[:, 0] = size - left[:, 0]
        centres = np.concatenate([left, right])[:n]
    else:  # scattered
        centres = rng.uniform(margin, size - margin, size=(n, 2))
    return np.clip(centres, margin * 0.5, size - margin * 0.5), radii


def _shape_field(rng, attrs, radius, box):
    """Normalised distance d (0 centre, 1 border) over a bounding box, plus unit offsets."""
    ys, xs = box
    angle = rng.uniform(0, np.pi)
    aspect = {"round": 1.0, "oval": 1.6, "linear": 3.5}.get(attrs.shape, rng.uniform(1.0, 1.4))
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (xs * cos + ys * sin) / radius          # along the long axis
    v = (-xs * sin + ys * cos) / radius
    d = np.sqrt((u * u) / aspect + (v * v) * aspect)
    irregular = attrs.border_regularity == "irregular" or attrs.shape == "irregular"
    if not irregular:
        return d, xs / radius, ys / radius
    # Border wobble sum_k a_k cos(k theta + phi_k), from cos/sin(theta) by the angle-addition
    # recurrence (cheaper than arctan2 + sin on every pixel).
    norm = np.sqrt(u * u + v * v) + 1e-6
    c1, s1 = u / norm, v / norm
    ck, sk = c1, s1
    wobble = np.ones_like(d)
    for k in range(1, 8):
        if k in (2, 3, 5, 7):
            amp = np.float32(0.22 / k ** 0.6 * rng.uniform(0.5, 1.0))
            phase = rng.uniform(0, 2 * np.pi)
            wobble += amp * (np.float32(np.cos(phase)) * ck - np.float32(np.sin(phase)) * sk)
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
    return d / np.maximum(wobble, 0.3), xs / radius, ys / radius


def _alpha(d, attrs):
    edge = 0.08 if attrs.border_definition == "well-defined" else 0.6
    alpha = np.clip((1.0 - d) / edge + (0.0 if edge < 0.1 else 0.3), 0.0, 1.0)
    if attrs.shape == "annular":  # active red rim, clearing centre
        alpha *= np.clip((d - 0.5) / 0.15, 0.0, 1.0)
    return alpha


def _lesion_colour(attrs, skin_tone, noise):
    """Colour field (h, w, 3): the primary colour, with later colours in noise-defined islands."""
    def rgb(name):
        if name == "skin-coloured":
            return np.minimum(skin_tone * 1.08 + 0.03, 1.0)
        base = np.asarray(COLOUR_RGB[name], dtype=np.float32)
        if name in TINTED_BY_SKIN:  # erythema looks violaceous-brown on dark skin
            base = 0.5 * base + 0.5 * base * skin_tone / SKIN_TONES[1][0]
        if name == "white":  # hypopigmentation: a much lighter version of the skin
            base = skin_tone + (1.0 - skin_tone) * 0.65
        return base
    colour = np.broadcast_to(rgb(attrs.colours[0]), noise.shape + (3,)).copy()
    for i, name in enumerate(attrs.colours[1:]):
        island = noise > (0.55 + 0.12 * i)
        colour[island] = rgb(name)
    return colour


def _elevation(d, lesion_type):
    """Height map in [0, 1]: domes for papules/nodules, plateaus for plaques and wheals."""
    if lesion_type in ("plaque", "wheal"):
        return np.clip((1.0 - d) / 0.3, 0.0, 1.0)
    return np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0))


def _paint_lesion(rng, image, skin_tone, attrs, centre, radius, noise_lo, noise_hi):
    size = image.shape[0]
    reach = radius * (2.2 if attrs.lesion_type in ("vesicle", "bulla", "pustule", "wheal")
                      else 1.6) + 2
    x0, x1 = int(max(centre[0] - reach, 0)), int(min(centre[0] + reach + 1, size))
    y0, y1 = int(max(centre[1] - reach, 0)), int(min(centre[1] + reach + 1, size))
    if x1 <= x0 or y1 <= y0:
        return
    ys, xs = np.ogrid[y0:y1, x0:x1]   # (h, 1), (1, w): broadcast instead of full grids
    d, un, vn = _shape_field(rng, attrs, radius, ((ys - centre[1]).astype(np.float32),
                                                  (xs - centre[0]).astype(np.float32)))
    region = image[y0:y1, x0:x1]                                  # view, (h, w, 3)
    lo, hi = noise_lo[y0:y1, x0:x1], noise_hi[y0:y1, x0:x1]
    alpha = _alpha(d, attrs)[..., None]                           # (h, w, 1)
    colour = _lesion_colour(attrs, skin_tone, lo)
    kind = attrs.lesion_type
    condition = CONDITIONS_BY_NAME[attrs.condition]
    white = np.float32(1.0)
    if kind in ("vesicle", "bulla"):     # translucent fluid over a red halo
        halo = np.clip(1.0 - np.abs(d - 1.15) / 0.3, 0.0, 1.0)[..., None] * 0.6
        region[:] = region * (1 - halo) + np.asarray(COLOUR_RGB["red"]) * halo
        colour = colour * 0.35 + white * 0.65
    elif kind == "pustule":              # yellow-white pus, red rim
        halo = np.clip(1.0 - np.abs(d - 1.2) / 0.4, 0.0, 1.0)[..., None] * 0.7
        region[:] = region * (1 - halo) + np.asarray(COLOUR_RGB["red"]) * halo
        colour = np.where((d < 0.7)[..., None], np.asarray(COLOUR_RGB["yellow"]) * 0.6 + 0.4,
                          colour)
    elif kind == "wheal":                # pale oedematous centre, erythematous flare
        flare = np.clip(1.0 - np.abs(d - 1.1) / 0.45, 0.0, 1.0)[..., None] * 0.55
        region[:] = region * (1 - flare) + colour * flare
        colour = colour * 0.45 + white * 0.55
    opacity = OPACITY.get(kind, 0.92)
    painted = region * (1 - alpha * opacity) + colour * alpha * opacity
    if kind in RAISED_LESION_TYPES:
        height = _elevation(d, kind)
        gy, gx = np.gradient(height)
        strength = {"nodule": 3.0, "cyst": 2.5, "papule": 2.0}.get(kind, 1.2)
        shade = 1.0 + strength * radius * 0.04 * (gx * LIGHT[0] + gy * LIGHT[1])
        painted *= np.clip(shade, 0.6, 1.4)[..., None]
        if kind in ("nodule", "vesicle", "bulla", "cyst") or condition.shiny:
            # specular highlight: a shiny / pearly dome
            spec = np.exp(-((un + 0.3) ** 2 + (vn + 0.3) ** 2) / 0.04)[..., None]
            painted += 0.45 * spec * alpha
    if kind in ("comedo", "cyst"):       # central dark punctum
        dot = np.clip((0.3 - d) / 0.08, 0.0, 1.0)[..., None]
        painted = painted * (1 - dot) + np.asarray(COLOUR_RGB["black"]) * dot
    painted = _surface(painted, attrs, d, alpha, lo, hi)
    region[:] = painted


def _surface(painted, attrs, d, alpha, lo, hi):
    a = alpha[..., 0]
    if attrs.surface == "scaly":        # silvery-white flakes
        flakes = ((hi > 0.62) * a)[..., None] * 0.8
        painted = painted * (1 - flakes) + np.float32(0.93) * flakes
    elif attrs.surface == "verrucous":  # papillomatous, rough, with dark clefts
        bumps = (hi - 0.5) * 0.7 + (lo - 0.5) * 0.5
        painted = painted * (1.0 + bumps * a)[..., None]
        clefts = ((hi < 0.12) * a)[..., None] * 0.6
        painted = painted * (1 - clefts * 0.7)
    if attrs.secondary == "crust":      # honey-coloured crust
        crust = ((lo > 0.45) * (d < 0.8) * a)[..., None] * 0.9
        painted = painted * (1 - crust) + np.asarray((0.70, 0.48, 0.16)) * crust
    elif attrs.secondary == "erosion":  # moist, bright red, glistening
        ero = np.clip((0.5 - d) / 0.1, 0.0, 1.0)[..., None]
        painted = painted * (1 - ero) + np.asarray((0.92, 0.40, 0.38)) * ero
    elif attrs.secondary == "ulcer":    # dark rim, yellow fibrin base
        rim = np.clip(1.0 - np.abs(d - 0.45) / 0.08, 0.0, 1.0)[..., None]
        base = np.clip((0.4 - d) / 0.06, 0.0, 1.0)[..., None]
        painted = painted * (1 - rim) + np.asarray((0.35, 0.05, 0.05)) * rim
        painted = painted * (1 - base) + np.asarray((0.82, 0.72, 0.45)) * base
    return painted


def _pigment_network(image, mask, rng, irregular):
    """Dermoscopic reticular network: dark lines on a grid, distorted for irregular lesions."""
    size = image.shape[0]
    yy, xx = (a.astype(np.float32) for a in np.ogrid[0:size, 0:size])
    freq = np.float32(rng.uniform(0.45, 0.6))
    warp = (_smooth_noise(rng, size, 8) - 0.5) * (9.0 if irregular else 2.0)
    lines = np.minimum(np.abs(np.sin((xx + warp) * freq)), np.abs(np.sin((yy - warp) * freq)))
    net = ((lines < 0.3) * mask)[..., None] * 0.35
    image *= 1.0 - net


def _aperture(image):
    size = image.shape[0]
    yy, xx = (a.astype(np.float32) for a in np.ogrid[0:size, 0:size])
    r = np.hypot(xx - size / 2, yy - size / 2) / np.float32(size / 2)
    image *= np.clip((1.0 - r) / 0.06, 0.0, 1.0)[..., None] * (1.0 - 0.25 * r * r)[..., None]


def _artefacts(rng, pil, attrs):
    size = pil.size[0]
    draw = ImageDraw.Draw(pil)
    if "hair" in attrs.artefacts:
        for _ in range(int(rng.integers(4, 12))):
            pts = [tuple(rng.uniform(0, size, 2))]
            heading = rng.uniform(0, 2 * np.pi)
            for _ in range(6):
                heading += rng.normal(0, 0.25)
                step = size * 0.08
                pts.append((pts[-1][0] + step * np.cos(heading),
                            pts[-1][1] + step * np.sin(heading)))
            draw.line(pts, fill=(25, 18, 14), width=max(1, size // 180))
    if "ruler" in attrs.artefacts:
        h = max(6, size // 14)
        draw.rectangle([0, size - h, size, size], fill=(235, 225, 170))
        for i, x in enumerate(range(0, size, max(3, size // 40))):
            draw.line([(x, size - h), (x, size - h + (h * 0.7 if i % 5 == 0 else h * 0.4))],
                      fill=(20, 20, 20), width=1)
    if "pen mark" in attrs.artefacts:
        c = size / 2
        r = size * rng.uniform(0.3, 0.42)
        draw.ellipse([c - r, c - r * 0.9, c + r, c + r * 0.9], outline=(80, 40, 150),
                     width=max(2, size // 90))
    if "blur" in attrs.artefacts:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=size / 90))
    arr = None
    if "low light" in attrs.artefacts or "glare" in attrs.artefacts:
        arr = np.asarray(pil, dtype=np.float32) / 255.0
        if "low light" in attrs.artefacts:
            arr = arr * 0.4 + rng.normal(0, 0.025, arr.shape).astype(np.float32)
        if "glare" in attrs.artefacts:
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
            for _ in range(int(rng.integers(1, 4))):
                gx, gy = rng.uniform(0.2, 0.8, 2) * size
                spot = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * (size * 0.05) ** 2))
                arr = arr + 0.8 * spot[..., None]
        pil = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    return pil


def render(attrs, size):
    """RGB PIL image of `attrs` at size x size; deterministic in (attrs.seed, attrs.index)."""
    rng = np.random.default_rng(sample_seed(attrs.seed, attrs.index) ^ 0x5EED)
    image, tone = _skin(rng, size, attrs.fitzpatrick, attrs.modality)
    noise_lo = _smooth_noise(rng, size, max(4, size // 12))   # blotches: colour islands, crust
    noise_hi = _smooth_noise(rng, size, max(8, size // 3))    # fine texture: scale, verrucae
    centres, radii = _lesion_layout(rng, attrs, size)
    for (cx, cy), radius in zip(centres.tolist(), radii.tolist()):
        _paint_lesion(rng, image, tone, attrs, (cx, cy), max(radius, 1.5), noise_lo, noise_hi)
    if attrs.modality == "dermoscopic":
        if CONDITIONS_BY_NAME[attrs.condition].dermoscopy_network:
            lesion = np.abs(image - image.mean(axis=(0, 1))).sum(-1) > 0.15
            _pigment_network(image, lesion, rng, attrs.border_regularity == "irregular")
        _aperture(image)
    np.clip(image, 0.0, 1.0, out=image)
    image *= 255
    pil = Image.fromarray(image.astype(np.uint8))
    if attrs.artefacts:
        pil = _artefacts(rng, pil, attrs)
    return pil

"""Skin tone without a label: the individual typology angle (ITA) of the skin around a lesion.

ITA = arctan((L* - 50) / b*) x 180 / pi on CIELAB pixels (D65), here the median L* and b* of
a ring along the image border, away from the lesion that photographs and dermoscopy centre;
pixels of a dermoscope's black aperture and specular highlights are left out. Groups by
Chardon et al. (1991), as Del Bino et al. and Kinyanjui et al. (2020) use them to audit ISIC
and SD-198: > 55 very light, 41-55 light, 28-41 intermediate, 10-28 tan, -30-10 brown,
< -30 dark. For per-group breakdowns they are paired into the three Fitzpatrick groups
(very light + light ~ I-II, intermediate + tan ~ III-IV, brown + dark ~ V-VI), the pairing
Groh et al. (2021) compare with Fitzpatrick labels; it is an estimate, validated on SynthDerm
(where the type is known) in docs/EXPERIMENTS.md.
"""
import numpy as np

ITA_GROUPS = ((55.0, "very light"), (41.0, "light"), (28.0, "intermediate"), (10.0, "tan"),
              (-30.0, "brown"), (-float("inf"), "dark"))
FITZPATRICK_OF_ITA = {"very light": "I-II", "light": "I-II", "intermediate": "III-IV",
                      "tan": "III-IV", "brown": "V-VI", "dark": "V-VI"}


def srgb_to_lab(rgb):
    """(..., 3) sRGB in [0, 1] -> CIELAB (D65 white), the standard formulas."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124564, 0.3575761, 0.1804375],
                             [0.2126729, 0.7151522, 0.0721750],
                             [0.0193339, 0.1191920, 0.9503041]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def ita_degrees(image, ring=0.15, size=96):
    """The ITA (degrees) of the skin along the border of a PIL image, or None when the ring
    holds no usable skin pixel."""
    rgb = np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float64) / 255
    lab = srgb_to_lab(rgb)
    margin = max(1, int(size * ring))
    border = np.ones((size, size), dtype=bool)
    border[margin:-margin, margin:-margin] = False
    pixels = lab[border]
    usable = pixels[(pixels[:, 0] > 15) & (pixels[:, 0] < 98)]    # no aperture, no glare
    if len(usable) < 10:
        return None
    lightness, b = np.median(usable[:, 0]), np.median(usable[:, 2])
    return float(np.degrees(np.arctan((lightness - 50) / max(b, 1e-6))))


def ita_group(ita):
    """Chardon's group for an ITA in degrees ("unknown" for None)."""
    if ita is None:
        return "unknown"
    return next(name for low, name in ITA_GROUPS if ita > low)


def estimated_fitzpatrick_group(image):
    """("I-II" | "III-IV" | "V-VI" | "unknown", ITA degrees or None) for a PIL image."""
    ita = ita_degrees(image)
    group = ita_group(ita)
    return FITZPATRICK_OF_ITA.get(group, "unknown"), ita

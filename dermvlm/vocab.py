"""The closed vocabularies shared by SynthDerm, the report schema, the benchmark and zero-shot.

Everything that names a visual attribute uses these tuples, so a caption, a report field and a
benchmark option for the same thing are spelled the same way. Order matters: it is the order of
options in benchmark questions and of columns in concept tables.
"""

# Elementary (primary) lesion types, a subset of the SkinCon vocabulary that SynthDerm renders.
LESION_TYPES = ("macule", "patch", "papule", "plaque", "nodule", "vesicle", "bulla",
                "pustule", "wheal", "cyst", "comedo")
LESION_PLURALS = {"patch": "patches", "bulla": "bullae", "macule": "macules",
                  "papule": "papules", "plaque": "plaques", "nodule": "nodules",
                  "vesicle": "vesicles", "pustule": "pustules", "wheal": "wheals",
                  "cyst": "cysts", "comedo": "comedones"}
RAISED_LESION_TYPES = frozenset({"papule", "plaque", "nodule", "vesicle", "bulla", "pustule",
                                 "wheal", "cyst"})
COLOURS = ("red", "pink", "brown", "dark brown", "black", "blue-grey", "white", "yellow",
           "purple", "skin-coloured")
BORDER_REGULARITY = ("regular", "irregular")
BORDER_DEFINITION = ("well-defined", "ill-defined")
SHAPES = ("round", "oval", "irregular", "annular", "linear")
SIZES = ("small", "medium", "large")             # < 5 mm, 5-15 mm, > 15 mm across
SIZE_RANGES_MM = {"small": (2.0, 5.0), "medium": (5.0, 15.0), "large": (15.0, 40.0)}
# The size each elementary lesion has by definition: a macule, papule or vesicle is under 1 cm;
# a patch, plaque, bulla or nodule is 1 cm or more. Wheals and cysts come in any size.
LESION_SIZE_MM = {"macule": (2.0, 9.5), "papule": (2.0, 9.5), "vesicle": (2.0, 9.5),
                  "pustule": (2.0, 9.5), "comedo": (2.0, 5.0), "patch": (10.0, 40.0),
                  "plaque": (10.0, 40.0), "bulla": (10.0, 40.0), "nodule": (10.0, 40.0)}

COUNTS = ("single", "few", "multiple")           # 1, 2-5, 6+
COUNT_RANGES = {"single": (1, 1), "few": (2, 5), "multiple": (6, 14)}
DISTRIBUTIONS = ("solitary", "grouped", "linear", "annular", "scattered", "symmetric")
SURFACES = ("smooth", "scaly", "verrucous")
SECONDARY_CHANGES = ("none", "crust", "erosion", "ulcer")
BODY_SITES = ("face", "scalp", "neck", "trunk", "back", "arm", "hand", "leg", "foot")
MODALITIES = ("clinical", "dermoscopic")
FITZPATRICK_TYPES = (1, 2, 3, 4, 5, 6)
FITZPATRICK_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}
FITZPATRICK_GROUPS = {"I-II": (1, 2), "III-IV": (3, 4), "V-VI": (5, 6)}
ARTEFACTS = ("hair", "ruler", "pen mark", "blur", "low light", "glare")
IMAGE_QUALITY = ("good", "acceptable", "poor")
CATEGORIES = ("inflammatory", "neoplastic", "infectious", "pigmentary")
MALIGNANCY = ("benign", "malignant", "premalignant")
URGENCY = ("routine", "soon", "urgent")
MALIGNANCY_CONCERNS = ("low", "moderate", "high")    # in rising order
NEXT_STEPS = ("reassurance and routine monitoring", "topical treatment and review",  # rising
              "dermatology review within weeks", "urgent referral for biopsy")
# how SynthDerm's conversations answer "Is this lesion malignant?" (and the cloze scorer reads)
MALIGNANCY_ANSWERS = {"benign": "It appears benign.",
                      "premalignant": "It looks premalignant and should be reviewed.",
                      "malignant": "Features suggest a malignant lesion; urgent review is "
                      "advised."}
URGENCY_NEXT_STEP = {"routine": NEXT_STEPS[0], "soon": NEXT_STEPS[2], "urgent": NEXT_STEPS[3]}

# The 48 SkinCon concepts in their published column order (Daneshjou et al. 2022).
SKINCON_CONCEPTS = (
    "Vesicle", "Papule", "Macule", "Plaque", "Abscess", "Pustule", "Bulla", "Patch", "Nodule",
    "Ulcer", "Crust", "Erosion", "Excoriation", "Atrophy", "Exudate", "Purpura/Petechiae",
    "Fissure", "Induration", "Xerosis", "Telangiectasia", "Scale", "Scar", "Friable",
    "Sclerosis", "Pedunculated", "Exophytic/Fungating", "Warty/Papillomatous", "Dome-shaped",
    "Flat topped", "Brown(Hyperpigmentation)", "Translucent", "White(Hypopigmentation)",
    "Purple", "Yellow", "Black", "Erythema", "Comedo", "Lichenification", "Blue", "Umbilicated",
    "Poikiloderma", "Salmon", "Wheal", "Acuminate", "Burrow", "Gray", "Pigmented", "Cyst",
)

# How SynthDerm attribute values light up SkinCon concepts (an attribute may set several).
ATTRIBUTE_TO_SKINCON = {
    "macule": ("Macule",), "patch": ("Patch",), "papule": ("Papule",), "plaque": ("Plaque",),
    "nodule": ("Nodule", "Dome-shaped"), "vesicle": ("Vesicle", "Translucent"),
    "bulla": ("Bulla", "Translucent"), "pustule": ("Pustule",), "wheal": ("Wheal",),
    "cyst": ("Cyst", "Dome-shaped"), "comedo": ("Comedo",),
    "red": ("Erythema",), "pink": ("Erythema", "Salmon"), "brown": ("Brown(Hyperpigmentation)",
                                                                    "Pigmented"),
    "dark brown": ("Brown(Hyperpigmentation)", "Pigmented"), "black": ("Black", "Pigmented"),
    "blue-grey": ("Blue", "Gray"), "white": ("White(Hypopigmentation)",), "yellow": ("Yellow",),
    "purple": ("Purple",), "scaly": ("Scale",), "verrucous": ("Warty/Papillomatous",),
    "crust": ("Crust",), "erosion": ("Erosion",), "ulcer": ("Ulcer",),
}


def fitzpatrick_group(fitzpatrick_type):
    """'I-II', 'III-IV' or 'V-VI' for a type 1..6; None for unknown (e.g. Fitzpatrick17k's -1)."""
    for group, members in FITZPATRICK_GROUPS.items():
        if fitzpatrick_type in members:
            return group
    return None


def size_class(size_mm):
    """'small', 'medium' or 'large' for a diameter in mm: the first SIZE_RANGES_MM class whose
    upper end lies above it."""
    return next((name for name in SIZES if size_mm < SIZE_RANGES_MM[name][1]), SIZES[-1])

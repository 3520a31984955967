"""The disease ontology: 31 conditions in a 3-4 level hierarchy. SynthDerm draws the first 29
(`SYNTH_CONDITIONS`), each a distribution over the visual attributes of `dermvlm.vocab`; the
last two are the ISIC archive's umbrella classes (`REAL_ONLY_CONDITIONS`), which real
dermoscopic sets label and SynthDerm does not render. `CONDITIONS` is all of them: the label set
of zero-shot prompts, the report schema and the evaluators.

Weights are relative (they need not sum to 1). A condition leaves out what it does not constrain,
and `Condition` fills in the vocabulary-wide defaults. The distributions are loosely clinical
(psoriasis: scaly red plaques on extensor sites; melanoma: irregular, multi-coloured, single) and
deliberately overlapping, so that a model must use several cues rather than one.
"""
from dataclasses import dataclass, field

from dermvlm import vocab


def _uniform(values):
    return {value: 1.0 for value in values}


@dataclass(frozen=True)
class Condition:
    name: str
    path: tuple                    # hierarchy from the top category down to the parent group
    malignancy: str                # one of vocab.MALIGNANCY
    urgency: str                   # one of vocab.URGENCY
    synonyms: tuple = ()
    symptoms: tuple = ("asymptomatic",)
    lesion_types: dict = field(default_factory=lambda: _uniform(vocab.LESION_TYPES[:4]))
    colours: dict = field(default_factory=lambda: {"pink": 1.0, "red": 1.0})
    n_colours: tuple = (1, 1)      # how many colours one lesion shows (min, max)
    border_regularity: dict = field(default_factory=lambda: {"regular": 2.0, "irregular": 1.0})
    border_definition: dict = field(default_factory=lambda: {"well-defined": 2.0,
                                                             "ill-defined": 1.0})
    shapes: dict = field(default_factory=lambda: {"round": 1.0, "oval": 1.0})
    sizes: dict = field(default_factory=lambda: {"small": 1.0, "medium": 2.0})
    counts: dict = field(default_factory=lambda: {"single": 1.0, "few": 1.0})
    distributions: dict = field(default_factory=lambda: {"grouped": 1.0, "scattered": 1.0})
    surfaces: dict = field(default_factory=lambda: {"smooth": 1.0})
    secondary: dict = field(default_factory=lambda: {"none": 1.0})
    sites: dict = field(default_factory=lambda: _uniform(vocab.BODY_SITES))
    dermoscopy_network: bool = False   # melanocytic lesions show a pigment network in dermoscopy
    shiny: bool = False                # pearly / glistening surface (a specular highlight)

    @property
    def category(self):
        return self.path[0].split()[0].lower()

    @property
    def hierarchy(self):
        """Top category first, the condition itself last."""
        return self.path + (self.name,)


_INFL, _NEO, _INF, _PIG = ("Inflammatory skin diseases", "Neoplastic skin lesions",
                           "Infectious skin diseases", "Pigmentary disorders")

SYNTH_CONDITIONS = (
    # ---- inflammatory
    Condition("psoriasis", (_INFL, "Papulosquamous disorders"), "benign", "routine",
              synonyms=("plaque psoriasis", "psoriasis vulgaris"), symptoms=("itch",),
              lesion_types={"plaque": 4, "papule": 1}, colours={"red": 3, "pink": 2},
              border_definition={"well-defined": 1}, sizes={"medium": 2, "large": 2},
              counts={"few": 2, "multiple": 1}, distributions={"symmetric": 3, "scattered": 1},
              surfaces={"scaly": 1}, sites={"arm": 2, "leg": 2, "scalp": 1, "back": 1}),
    Condition("lichen planus", (_INFL, "Papulosquamous disorders"), "benign", "routine",
              symptoms=("itch",), lesion_types={"papule": 3, "plaque": 1},
              colours={"purple": 4, "dark brown": 1}, sizes={"small": 3},
              counts={"multiple": 3, "few": 1}, distributions={"grouped": 2, "linear": 1},
              sites={"arm": 2, "hand": 2, "leg": 1}),
    Condition("pityriasis rosea", (_INFL, "Papulosquamous disorders"), "benign", "routine",
              lesion_types={"patch": 3, "plaque": 1}, colours={"pink": 3, "red": 1},
              shapes={"oval": 4}, sizes={"medium": 3}, counts={"multiple": 3},
              distributions={"scattered": 2, "symmetric": 2}, surfaces={"scaly": 2, "smooth": 1},
              sites={"trunk": 2, "back": 2}),
    Condition("atopic dermatitis", (_INFL, "Eczematous dermatitis"), "benign", "routine",
              synonyms=("eczema", "atopic eczema"), symptoms=("itch", "dry skin"),
              lesion_types={"patch": 3, "plaque": 2}, colours={"red": 3, "pink": 1},
              border_definition={"ill-defined": 1}, border_regularity={"irregular": 1},
              shapes={"irregular": 1}, sizes={"medium": 1, "large": 2},
              counts={"few": 1, "multiple": 1}, distributions={"symmetric": 2, "grouped": 1},
              surfaces={"scaly": 2, "smooth": 1}, secondary={"crust": 1, "erosion": 1, "none": 2},
              sites={"arm": 2, "neck": 2, "face": 1, "leg": 1}),
    Condition("seborrhoeic dermatitis", (_INFL, "Eczematous dermatitis"), "benign", "routine",
              lesion_types={"patch": 3}, colours={"pink": 2, "yellow": 1}, n_colours=(1, 2),
              border_definition={"ill-defined": 1}, sizes={"medium": 1, "large": 1},
              counts={"few": 1, "single": 1}, distributions={"symmetric": 1, "grouped": 1},
              surfaces={"scaly": 1}, sites={"face": 2, "scalp": 2}),
    Condition("contact dermatitis", (_INFL, "Eczematous dermatitis"), "benign", "routine",
              symptoms=("itch", "burning"), lesion_types={"vesicle": 2, "patch": 2},
              colours={"red": 3}, border_definition={"well-defined": 1, "ill-defined": 1},
              sizes={"small": 2, "medium": 1}, counts={"multiple": 2, "few": 1},
              distributions={"linear": 2, "grouped": 2}, secondary={"none": 2, "crust": 1},
              sites={"hand": 2, "arm": 2}),
    Condition("urticaria", (_INFL, "Urticarial disorders"), "benign", "soon",
              synonyms=("hives",), symptoms=("itch", "transient swelling"),
              lesion_types={"wheal": 1}, colours={"pink": 2, "red": 1},
              shapes={"round": 1, "annular": 1, "irregular": 1}, sizes={"medium": 2, "large": 1},
              counts={"few": 1, "multiple": 2}, distributions={"scattered": 2, "annular": 1},
              sites={"trunk": 2, "arm": 1, "leg": 1, "back": 1}),
    Condition("acne vulgaris", (_INFL, "Acne and related disorders"), "benign", "routine",
              synonyms=("acne",), lesion_types={"papule": 2, "pustule": 2, "comedo": 1},
              colours={"red": 3, "pink": 1}, sizes={"small": 1}, counts={"multiple": 1},
              distributions={"scattered": 2, "grouped": 1}, sites={"face": 3, "back": 1,
                                                                     "trunk": 1}),
    Condition("rosacea", (_INFL, "Acne and related disorders"), "benign", "routine",
              lesion_types={"patch": 2, "papule": 1}, colours={"red": 2, "pink": 1},
              border_definition={"ill-defined": 1}, sizes={"large": 1, "small": 1},
              counts={"few": 1, "multiple": 1}, distributions={"symmetric": 1},
              sites={"face": 1}),
    # ---- neoplastic
    Condition("melanocytic nevus", (_NEO, "Benign neoplasms", "Melanocytic"), "benign",
              "routine", synonyms=("mole", "common nevus", "nevus", "naevus"),
              lesion_types={"macule": 1, "papule": 1},
              colours={"brown": 3, "dark brown": 1}, border_regularity={"regular": 1},
              border_definition={"well-defined": 1}, shapes={"round": 2, "oval": 1},
              sizes={"small": 2, "medium": 1}, counts={"single": 3, "few": 1},
              distributions={"solitary": 1}, dermoscopy_network=True),
    Condition("blue nevus", (_NEO, "Benign neoplasms", "Melanocytic"), "benign", "routine",
              lesion_types={"papule": 2, "macule": 1}, colours={"blue-grey": 1},
              border_regularity={"regular": 1}, border_definition={"well-defined": 1},
              shapes={"round": 1}, sizes={"small": 2, "medium": 1}, counts={"single": 1},
              distributions={"solitary": 1}, sites={"hand": 1, "face": 1, "arm": 1}),
    Condition("melanoma", (_NEO, "Malignant neoplasms", "Melanocytic"), "malignant", "urgent",
              synonyms=("malignant melanoma", "cutaneous melanoma"),
              symptoms=("changing mole", "bleeding"), lesion_types={"macule": 1, "plaque": 2,
                                                                    "nodule": 1},
              colours={"brown": 2, "black": 2, "dark brown": 2, "blue-grey": 1, "red": 1},
              n_colours=(2, 3), border_regularity={"irregular": 1},
              border_definition={"ill-defined": 2, "well-defined": 1}, shapes={"irregular": 1},
              sizes={"medium": 2, "large": 2}, counts={"single": 1}, distributions={"solitary": 1},
              secondary={"none": 3, "ulcer": 1}, sites={"back": 2, "leg": 2, "trunk": 1,
                                                         "arm": 1, "face": 1},
              dermoscopy_network=True),
    Condition("seborrhoeic keratosis", (_NEO, "Benign neoplasms", "Epidermal"), "benign",
              "routine", synonyms=("seborrheic keratosis", "basal cell papilloma"),
              lesion_types={"plaque": 2, "papule": 1}, colours={"brown": 2, "dark brown": 2},
              border_definition={"well-defined": 1}, shapes={"oval": 2, "round": 1},
              sizes={"medium": 2, "small": 1}, counts={"single": 1, "few": 1},
              distributions={"scattered": 1, "solitary": 1}, surfaces={"verrucous": 1},
              sites={"back": 2, "trunk": 2, "face": 1}),
    Condition("dermatofibroma", (_NEO, "Benign neoplasms", "Fibrohistiocytic"), "benign",
              "routine", lesion_types={"papule": 1}, colours={"brown": 2, "pink": 1},
              n_colours=(1, 2), border_definition={"well-defined": 1}, shapes={"round": 1},
              sizes={"small": 2, "medium": 1}, counts={"single": 1},
              distributions={"solitary": 1}, sites={"leg": 3, "arm": 1}),
    Condition("basal cell carcinoma", (_NEO, "Malignant neoplasms", "Keratinocytic"),
              "malignant", "soon", synonyms=("BCC", "rodent ulcer"),
              lesion_types={"nodule": 3, "papule": 1}, colours={"pink": 2, "skin-coloured": 1},
              border_regularity={"regular": 1, "irregular": 1}, shapes={"round": 1, "oval": 1},
              sizes={"small": 1, "medium": 2}, counts={"single": 1},
              distributions={"solitary": 1}, secondary={"none": 1, "ulcer": 1},
              sites={"face": 3, "neck": 1}, shiny=True),
    Condition("squamous cell carcinoma", (_NEO, "Malignant neoplasms", "Keratinocytic"),
              "malignant", "urgent", synonyms=("SCC", "cutaneous squamous cell carcinoma"),
              symptoms=("tenderness", "bleeding"), lesion_types={"nodule": 2, "plaque": 1},
              colours={"red": 2, "pink": 1}, border_regularity={"irregular": 1},
              border_definition={"ill-defined": 1, "well-defined": 1}, shapes={"irregular": 1},
              sizes={"medium": 2, "large": 1}, counts={"single": 1},
              distributions={"solitary": 1}, surfaces={"scaly": 1, "smooth": 1},
              secondary={"crust": 2, "ulcer": 2}, sites={"hand": 2, "face": 2, "scalp": 1}),
    Condition("actinic keratosis", (_NEO, "Premalignant lesions"), "premalignant", "soon",
              synonyms=("solar keratosis",), lesion_types={"macule": 1, "patch": 1,
                                                           "papule": 1},
              colours={"pink": 2, "red": 1}, border_definition={"ill-defined": 1},
              shapes={"irregular": 1, "round": 1}, sizes={"small": 2, "medium": 1},
              counts={"few": 2, "multiple": 1}, distributions={"scattered": 1},
              surfaces={"scaly": 1}, sites={"face": 2, "scalp": 2, "hand": 1}),
    Condition("cherry angioma", (_NEO, "Benign neoplasms", "Vascular"), "benign", "routine",
              lesion_types={"papule": 1}, colours={"red": 2, "purple": 1},
              border_regularity={"regular": 1}, border_definition={"well-defined": 1},
              shapes={"round": 1}, sizes={"small": 1}, counts={"multiple": 2, "few": 1},
              distributions={"scattered": 1}, sites={"trunk": 2, "back": 1}),
    Condition("pyogenic granuloma", (_NEO, "Benign neoplasms", "Vascular"), "benign", "soon",
              symptoms=("bleeding",), lesion_types={"nodule": 1}, colours={"red": 1},
              border_definition={"well-defined": 1}, shapes={"round": 1},
              sizes={"small": 1, "medium": 1}, counts={"single": 1},
              distributions={"solitary": 1}, secondary={"erosion": 1, "crust": 1},
              sites={"hand": 2, "face": 1}),
    # ---- infectious
    Condition("tinea corporis", (_INF, "Fungal infections"), "benign", "routine",
              synonyms=("ringworm",), symptoms=("itch",), lesion_types={"plaque": 1},
              colours={"red": 2, "pink": 1}, shapes={"annular": 1},
              border_definition={"well-defined": 1}, sizes={"medium": 1, "large": 2},
              counts={"single": 1, "few": 1}, distributions={"annular": 1, "scattered": 1},
              surfaces={"scaly": 1}, sites={"trunk": 2, "arm": 1, "leg": 1}),
    Condition("tinea versicolor", (_INF, "Fungal infections"), "benign", "routine",
              synonyms=("pityriasis versicolor",), lesion_types={"macule": 2, "patch": 1},
              colours={"white": 2, "brown": 1}, border_definition={"well-defined": 1},
              sizes={"small": 1, "medium": 1}, counts={"multiple": 1},
              distributions={"scattered": 2, "grouped": 1}, surfaces={"scaly": 1, "smooth": 1},
              sites={"back": 2, "trunk": 2}),
    Condition("herpes simplex", (_INF, "Viral infections"), "benign", "soon",
              synonyms=("cold sore", "HSV infection"), symptoms=("tingling", "pain"),
              lesion_types={"vesicle": 1}, colours={"red": 1}, shapes={"round": 1},
              sizes={"small": 1}, counts={"few": 1, "multiple": 1}, distributions={"grouped": 1},
              secondary={"none": 2, "crust": 1, "erosion": 1}, sites={"face": 3}),
    Condition("herpes zoster", (_INF, "Viral infections"), "benign", "urgent",
              synonyms=("shingles",), symptoms=("pain", "burning"),
              lesion_types={"vesicle": 2, "bulla": 1}, colours={"red": 1}, sizes={"small": 1},
              counts={"multiple": 1}, distributions={"linear": 2, "grouped": 1},
              secondary={"none": 2, "crust": 1}, sites={"trunk": 2, "back": 2, "face": 1}),
    Condition("common wart", (_INF, "Viral infections"), "benign", "routine",
              synonyms=("verruca vulgaris",), lesion_types={"papule": 2, "nodule": 1},
              colours={"skin-coloured": 2, "brown": 1}, border_definition={"well-defined": 1},
              shapes={"round": 1}, sizes={"small": 2, "medium": 1}, counts={"single": 1,
                                                                            "few": 1},
              distributions={"solitary": 1, "grouped": 1}, surfaces={"verrucous": 1},
              sites={"hand": 3, "foot": 2}),
    Condition("molluscum contagiosum", (_INF, "Viral infections"), "benign", "routine",
              lesion_types={"papule": 1}, colours={"skin-coloured": 1, "pink": 1},
              border_regularity={"regular": 1}, border_definition={"well-defined": 1},
              shapes={"round": 1}, sizes={"small": 1}, counts={"multiple": 1},
              distributions={"grouped": 1}, sites={"trunk": 1, "arm": 1, "face": 1}),
    Condition("impetigo", (_INF, "Bacterial infections"), "benign", "soon",
              lesion_types={"vesicle": 1, "plaque": 1}, colours={"yellow": 2, "red": 1},
              n_colours=(1, 2), border_regularity={"irregular": 1}, shapes={"irregular": 1},
              sizes={"medium": 1}, counts={"few": 1}, distributions={"grouped": 1},
              secondary={"crust": 3, "erosion": 1}, sites={"face": 3, "arm": 1}),
    Condition("cellulitis", (_INF, "Bacterial infections"), "benign", "urgent",
              symptoms=("pain", "warmth", "fever"), lesion_types={"patch": 1},
              colours={"red": 1}, border_definition={"ill-defined": 1},
              border_regularity={"irregular": 1}, shapes={"irregular": 1}, sizes={"large": 1},
              counts={"single": 1}, distributions={"solitary": 1}, sites={"leg": 3, "foot": 1}),
    # ---- pigmentary
    Condition("vitiligo", (_PIG, "Hypopigmentation"), "benign", "routine",
              lesion_types={"macule": 1, "patch": 2}, colours={"white": 1},
              border_definition={"well-defined": 1}, border_regularity={"irregular": 1},
              shapes={"irregular": 1}, sizes={"medium": 1, "large": 1},
              counts={"few": 1, "multiple": 1}, distributions={"symmetric": 2, "scattered": 1},
              sites={"hand": 2, "face": 2, "arm": 1}),
    Condition("melasma", (_PIG, "Hyperpigmentation"), "benign", "routine",
              lesion_types={"patch": 1}, colours={"brown": 2, "dark brown": 1},
              border_definition={"ill-defined": 1}, border_regularity={"irregular": 1},
              shapes={"irregular": 1}, sizes={"large": 1}, counts={"few": 1},
              distributions={"symmetric": 1}, sites={"face": 1}),
)

# ISIC's "BKL" and "VASC": groups of benign lesions that dermoscopic sets label as one class
REAL_ONLY_CONDITIONS = (
    Condition("pigmented benign keratosis", (_NEO, "Benign neoplasms", "Epidermal"), "benign",
              "routine", synonyms=("benign keratosis", "solar lentigo",
                                   "lichen planus-like keratosis")),
    Condition("vascular lesion", (_NEO, "Benign neoplasms", "Vascular"), "benign", "routine",
              synonyms=("angioma", "haemangioma", "angiokeratoma")),
)
CONDITIONS = SYNTH_CONDITIONS + REAL_ONLY_CONDITIONS
CONDITIONS_BY_NAME = {condition.name: condition for condition in CONDITIONS}
_BY_ANY_NAME = {name.lower(): condition for condition in CONDITIONS
                for name in (condition.name,) + condition.synonyms}


def find_condition(name):
    """The Condition a diagnosis name or one of its synonyms names (case-insensitive;
    "nevus" -> melanocytic nevus, "seborrheic keratosis" -> seborrhoeic keratosis), or None."""
    return _BY_ANY_NAME.get(" ".join(str(name).replace("_", " ").split()).lower())


def ontology_tree():
    """Derm1M-style ontology.json: {node: [children]}, a 'root' node, leaves map to []."""
    tree = {"root": []}
    for condition in CONDITIONS:
        parent = "root"
        for node in condition.hierarchy:
            tree.setdefault(node, [])
            if node not in tree[parent]:
                tree[parent].append(node)
            parent = node
    return tree

"""The structured lesion report: one pydantic schema, used for SynthDerm's ground truth, for the
VLM's `describe` output (validated, never a raw string passed off as JSON) and for evaluation.
"""
from typing import List, Literal, Optional, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dermvlm import vocab

DISCLAIMER = ("Research tool output, not a diagnosis. A qualified clinician must examine the "
              "patient before any decision.")

LesionType = Literal[vocab.LESION_TYPES]
Colour = Literal[vocab.COLOURS]
Surface = Literal[vocab.SURFACES]
Secondary = Literal[vocab.SECONDARY_CHANGES]
# a finding the image cannot show (a dermoscopic close-up has no scale and no body around
# it): set from the image's case, never decoded
NOT_ASSESSABLE = "not assessable"
# fields the app's case fills in, not the model
CASE_FIELDS = ("modality",)


class DifferentialItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    diagnosis: str = Field(min_length=1)
    likelihood: float = Field(ge=0.0, le=1.0)


class OutOfDistribution(BaseModel):
    """How far the image is from what the model was trained on (dermvlm.trust); above the
    threshold the report gives no differential, concern or next step."""
    model_config = ConfigDict(extra="forbid")
    ood_score: float
    threshold: float
    abstained: bool
    message: str = ""
    # why there is no answer: "not skin", "out of scope", "low confidence" (dermvlm.trust), or
    # "" (out of distribution, or answered)
    reason: str = ""


class LesionReport(BaseModel):
    """What a dermatologist writes about one image, field by field. Every field is given,
    unless the model abstained (out_of_distribution.abstained): then every finding is None
    and the differential empty, since nothing about the image can be trusted."""
    model_config = ConfigDict(extra="forbid")
    elementary_lesions: Optional[List[LesionType]] = Field(min_length=1)
    colours: Optional[List[Colour]] = Field(min_length=1)
    border_regularity: Optional[Literal[vocab.BORDER_REGULARITY]]
    border_definition: Optional[Literal[vocab.BORDER_DEFINITION]]
    shape: Optional[Literal[vocab.SHAPES]]
    size: Optional[Literal[vocab.SIZES + (NOT_ASSESSABLE,)]]
    size_mm_estimate: Optional[float] = Field(gt=0.0, le=200.0)   # None when not assessable
    count: Optional[Literal[vocab.COUNTS]]
    distribution: Optional[Literal[vocab.DISTRIBUTIONS]]
    surface_features: Optional[List[Surface]] = Field(min_length=1)
    secondary_changes: Optional[List[Secondary]] = Field(min_length=1)
    body_site: Optional[Literal[vocab.BODY_SITES + (NOT_ASSESSABLE,)]]
    image_quality: Optional[Literal[vocab.IMAGE_QUALITY]]
    differential: List[DifferentialItem] = Field(max_length=5)
    malignancy_concern: Optional[Literal[vocab.MALIGNANCY_CONCERNS]]
    suggested_next_step: Optional[Literal[vocab.NEXT_STEPS]]
    disclaimer: str = DISCLAIMER
    # the modality the app judged the image to be (its case); absent in ground truth
    modality: Optional[Literal[vocab.MODALITIES]] = None
    # absent in ground truth; set by describe when the model has an OOD reference
    out_of_distribution: Optional[OutOfDistribution] = None

    @model_validator(mode="after")
    def _answered_unless_abstained(self):
        abstained = self.out_of_distribution is not None and self.out_of_distribution.abstained
        names = [name for name in type(self).model_fields
                 if name not in ("disclaimer", "out_of_distribution") + CASE_FIELDS]
        findings = [getattr(self, name) for name in names]
        given = [bool(v) if name == "differential" else
                 v is not None or (name == "size_mm_estimate" and self.size == NOT_ASSESSABLE)
                 for name, v in zip(names, findings)]
        if abstained and any(given):
            raise ValueError("an abstained report gives no findings, differential, concern "
                             "or next step")
        if not abstained and not all(given):
            missing = [n for n, g in zip(names, given) if not g]
            raise ValueError(f"a report needs every field (missing: {', '.join(missing)}); "
                             "the differential has 1-5 items")
        return self

    @field_validator("differential")
    @classmethod
    def _ranked(cls, items):
        likelihoods = [item.likelihood for item in items]
        if likelihoods != sorted(likelihoods, reverse=True):
            raise ValueError("differential must be ranked by decreasing likelihood")
        if sum(likelihoods) > 1.0 + 1e-6:
            raise ValueError("differential likelihoods must sum to at most 1")
        return items


MALIGNANCY_CONCERN = {"benign": "low", "premalignant": "moderate", "malignant": "high"}


def field_choices():
    """{field: (allowed values, is a list)} for every LesionReport field whose values come
    from a closed vocabulary, in schema order, read off the schema itself."""
    choices = {}
    for name, field in LesionReport.model_fields.items():
        if name in CASE_FIELDS:
            continue
        annotation = field.annotation
        if type(None) in get_args(annotation):                      # Optional[...]
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        is_list = get_origin(annotation) in (list, List)
        if is_list:
            annotation = get_args(annotation)[0]
        if get_origin(annotation) is Literal:
            choices[name] = (tuple(v for v in get_args(annotation) if v != NOT_ASSESSABLE),
                             is_list)
    return choices


def abstained_report(verdict, message):
    """The report for an image the model abstains on: no findings, the reason."""
    empty = {name: None for name in LesionReport.model_fields
             if name not in ("differential", "disclaimer", "out_of_distribution")}
    return LesionReport(**empty, differential=[], out_of_distribution=OutOfDistribution(
        **{**verdict, "message": message}))


def report_from_attributes(attrs, differential):
    """Ground-truth report for a SynthDerm sample; `differential` is [(name, likelihood), ...]."""
    return LesionReport(
        elementary_lesions=[attrs.lesion_type], colours=list(attrs.colours),
        border_regularity=attrs.border_regularity, border_definition=attrs.border_definition,
        shape=attrs.shape, size=attrs.size, size_mm_estimate=attrs.size_mm, count=attrs.count,
        distribution=attrs.distribution, surface_features=[attrs.surface],
        secondary_changes=[attrs.secondary], body_site=attrs.body_site,
        image_quality=attrs.image_quality,
        differential=[DifferentialItem(diagnosis=d, likelihood=p) for d, p in differential],
        malignancy_concern=MALIGNANCY_CONCERN[attrs.malignancy],
        suggested_next_step=vocab.URGENCY_NEXT_STEP[attrs.urgency],
    )


def _unseen_note(report):
    unseen = [what for what, field in (("scale", report.size), ("body", report.body_site))
              if field == NOT_ASSESSABLE]
    return f" (no {' or '.join(unseen)} in the image)" if unseen else ""


def render_report_text(report):
    """A short readable rendering of a report for terminals and the app."""
    ood = report.out_of_distribution
    if ood is not None and ood.abstained:
        from dermvlm.trust import ood_note
        return f"{ood.message}{ood_note(ood.model_dump())}\n{report.disclaimer}"
    top = report.differential[0]
    lines = [
        f"Lesions: {', '.join(report.elementary_lesions)} ({report.count}, {report.distribution})",
        f"Colour: {', '.join(report.colours)}; border {report.border_regularity}, "
        f"{report.border_definition}; shape {report.shape}",
        f"Size: {report.size}" + (f" (~{report.size_mm_estimate:g} mm)"
                                  if report.size_mm_estimate is not None else "")
        + f"; site: {report.body_site}" + _unseen_note(report),
        f"Surface: {', '.join(report.surface_features)}; secondary: "
        f"{', '.join(report.secondary_changes)}",
        f"Image quality: {report.image_quality}" + (
            f"; judged a {report.modality} image" if report.modality else ""),
        "Differential: " + "; ".join(f"{d.diagnosis} ({d.likelihood:.0%})"
                                     for d in report.differential),
        f"Malignancy concern: {report.malignancy_concern}. Next step: "
        f"{report.suggested_next_step}.",
        f"Most likely: {top.diagnosis}. {report.disclaimer}",
    ]
    return "\n".join(lines)

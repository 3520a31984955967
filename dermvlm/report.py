"""The structured lesion report: one pydantic schema, used for SynthDerm's ground truth, for the
VLM's `describe` output (validated, never a raw string passed off as JSON) and for evaluation.
"""
from typing import List, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dermvlm import vocab

DISCLAIMER = ("Research tool output, not a diagnosis. A qualified clinician must examine the "
              "patient before any decision.")

LesionType = Literal[vocab.LESION_TYPES]
Colour = Literal[vocab.COLOURS]
Surface = Literal[vocab.SURFACES]
Secondary = Literal[vocab.SECONDARY_CHANGES]


class DifferentialItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    diagnosis: str = Field(min_length=1)
    likelihood: float = Field(ge=0.0, le=1.0)


class LesionReport(BaseModel):
    """What a dermatologist writes about one image, field by field."""
    model_config = ConfigDict(extra="forbid")
    elementary_lesions: List[LesionType] = Field(min_length=1)
    colours: List[Colour] = Field(min_length=1)
    border_regularity: Literal[vocab.BORDER_REGULARITY]
    border_definition: Literal[vocab.BORDER_DEFINITION]
    shape: Literal[vocab.SHAPES]
    size: Literal[vocab.SIZES]
    size_mm_estimate: float = Field(gt=0.0, le=200.0)
    count: Literal[vocab.COUNTS]
    distribution: Literal[vocab.DISTRIBUTIONS]
    surface_features: List[Surface] = Field(min_length=1)
    secondary_changes: List[Secondary] = Field(min_length=1)
    body_site: Literal[vocab.BODY_SITES]
    image_quality: Literal[vocab.IMAGE_QUALITY]
    differential: List[DifferentialItem] = Field(min_length=1, max_length=5)
    malignancy_concern: Literal[vocab.MALIGNANCY_CONCERNS]
    suggested_next_step: Literal[vocab.NEXT_STEPS]
    disclaimer: str = DISCLAIMER

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
        annotation, is_list = field.annotation, get_origin(field.annotation) in (list, List)
        if is_list:
            annotation = get_args(annotation)[0]
        if get_origin(annotation) is Literal:
            choices[name] = (get_args(annotation), is_list)
    return choices


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


def render_report_text(report):
    """A short readable rendering of a report for terminals and the app."""
    top = report.differential[0]
    lines = [
        f"Lesions: {', '.join(report.elementary_lesions)} ({report.count}, {report.distribution})",
        f"Colour: {', '.join(report.colours)}; border {report.border_regularity}, "
        f"{report.border_definition}; shape {report.shape}",
        f"Size: {report.size} (~{report.size_mm_estimate:g} mm); site: {report.body_site}",
        f"Surface: {', '.join(report.surface_features)}; secondary: "
        f"{', '.join(report.secondary_changes)}",
        f"Image quality: {report.image_quality}",
        "Differential: " + "; ".join(f"{d.diagnosis} ({d.likelihood:.0%})"
                                     for d in report.differential),
        f"Malignancy concern: {report.malignancy_concern}. Next step: "
        f"{report.suggested_next_step}.",
        f"Most likely: {top.diagnosis}. {report.disclaimer}",
    ]
    return "\n".join(lines)

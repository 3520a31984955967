"""SynthDerm: procedurally rendered dermatology images whose every attribute is known.

Modules: `ontology` (conditions), `sample` (attributes), `render` (pixels), `text` (captions,
VQA, answers), `writer` (datasets on disk in the real formats), `preview` (contact sheet).
"""

"""SynthDerm: procedurally rendered dermatology images whose every attribute is known.

Modules: `sample` (attributes), `render` (pixels), `text` (captions, VQA, answers), `writer`
(datasets on disk in the real formats), `preview` (contact sheet). The conditions it draws
from live in `dermvlm.ontology`, which the rest of the library reads too.
"""

"""The synthetic "shapes" text-video benchmark: ``generate_dataset(out_dir, num_videos, seed)``.

Modules: :mod:`~etva.data.synth.generate` (the output directory, workers, manifest),
:mod:`~etva.data.synth.content` (clip specs, vocabulary and captions), :mod:`~etva.data.synth.layouts`
(the MSRVTT / ActivityNet / LSMDC annotation layouts) and :mod:`~etva.data.synth.render` (frames, audio
and the H.264/AAC encoder). Importing this package imports the generator (PyAV included).
"""

from etva.data.synth.generate import (
    FORMATS,
    GENERATOR_VERSION,
    MANIFEST_NAME,
    PARTIAL_NAME,
    SynthError,
    generate_dataset,
)

__all__ = ["SynthError", "FORMATS", "MANIFEST_NAME", "PARTIAL_NAME", "GENERATOR_VERSION", "generate_dataset"]

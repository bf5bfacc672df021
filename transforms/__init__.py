"""Beam PTransforms and DoFns: each stage of the pipeline composes the Beam-free core in imgsim."""

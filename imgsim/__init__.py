"""imgsim: find similar images in large collections (VGG16 embeddings, Beam, ScaNN).

This package is the Beam-free core; the pipeline lives in imgsim.pipelines and
imgsim.transforms (the repository's top-level pipelines/ and transforms/).
"""
__version__ = "0.1.0"

"""imgsim: find similar images in large collections (VGG16 embeddings, Beam, ScaNN).

    import imgsim
    imgsim.run(input="manifest.csv", output="out/")      # the pipeline (needs the `pipeline` extra)
    imgsim.build_index("out/", ids=ids, vectors=vectors)   # an index from any vectors, no Beam
    imgsim.ImageIndex.open("out/").similar("1915.534")     # the consumer library, no Beam

Importing imgsim is cheap: these names load their modules on first use.
"""
__version__ = "0.1.0"

__all__ = ["run", "build_index", "export", "evaluate", "explore", "serve", "plan", "ImageIndex", "IndexFollower",
           "RunSummary", "ConfigError", "__version__"]

_LAZY = {
    "run": ("imgsim.api", "run"),
    "build_index": ("imgsim.api", "build_index"),
    "evaluate": ("imgsim.api", "evaluate"),
    "export": ("imgsim.api", "export"),
    "explore": ("imgsim.api", "explore"),
    "serve": ("imgsim.api", "serve"),
    "plan": ("imgsim.api", "plan"),
    "ImageIndex": ("imgsim.index.consumer", "ImageIndex"),
    "IndexFollower": ("imgsim.index.follower", "IndexFollower"),
    "RunSummary": ("imgsim.runs.summary", "RunSummary"),
    "ConfigError": ("imgsim.config.flags", "ConfigError"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'imgsim' has no attribute {name!r}")

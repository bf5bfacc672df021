"""The quality of "similar", measured (`imgsim evaluate`): labelled retrieval, near-duplicate detection, a report."""

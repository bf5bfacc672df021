"""Measuring how good "similar" is: labelled retrieval, near-duplicate detection, and a report."""

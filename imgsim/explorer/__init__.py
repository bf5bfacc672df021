"""The explorer: a static site over a published index (thumbnails, neighbours, groups, a map)."""

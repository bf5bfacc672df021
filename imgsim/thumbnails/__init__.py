"""Thumbnails: small WebP images made from the pixels decoding already produced, stored in packs."""

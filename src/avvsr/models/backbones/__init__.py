"""VSR backbones, one file each; shared building blocks live in :mod:`.blocks`."""

"""The SD v1 modules, read like the CompVis code: attribute names are the checkpoint keys, no device tricks."""

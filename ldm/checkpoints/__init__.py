"""SD v1 files: reading every layout, detecting what a file is, building modules, converting, hashing."""
